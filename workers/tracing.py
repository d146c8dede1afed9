"""W3C trace context across the queue: the sender's span becomes the task's parent.

``before_task_publish`` writes the current span's ``traceparent`` (and ``tracestate``)
into the message's headers, whichever app or process sends it (the API, the CLI, beat,
another task). In the worker, ``task_prerun`` attaches that context and, with tracing on,
opens a CONSUMER span ``process <task name>`` (messaging attributes: system celery,
destination the queue, message id the task id) that is current while the task runs, so
gateway calls, audit entries and tasks it sends are in the sender's trace;
``task_postrun`` ends it (status error when the task raised). A message without a
traceparent starts a new trace (tracing on) or runs outside any (off). Headers are plain
strings in the JSON message; nothing here touches the body.

Off (no tracing endpoint) the hooks only copy the header and attach the caller's context:
no span is created and nothing is exported.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import (
    before_task_publish,
    task_failure,
    task_postrun,
    task_prerun,
)

from fleet import tracing

log = logging.getLogger("fleet.workers.tracing")

_TRACE_HEADERS = ("traceparent", "tracestate")

_lock = threading.Lock()
_connected = False
# task id -> (context token, span or None); prerun and postrun run on the task's thread.
_open: dict[str, tuple[object, tracing.Span | None]] = {}


def connect() -> None:
    """Connect the hooks once per process (the signals are global to Celery)."""
    global _connected
    with _lock:
        if _connected:
            return
        _connected = True
    before_task_publish.connect(_on_publish, weak=False)
    task_prerun.connect(_on_prerun, weak=False)
    task_failure.connect(_on_failure, weak=False)
    task_postrun.connect(_on_postrun, weak=False)


def _on_publish(headers: dict[str, Any] | None = None, **_: object) -> None:
    if headers is None or "traceparent" in headers:
        return  # an explicit traceparent (a caller's own) is kept as given
    carrier: dict[str, str] = {}
    tracing.inject(carrier)
    headers.update(carrier)


def _carrier(request: Any) -> dict[str, str]:
    carrier: dict[str, str] = {}
    for name in _TRACE_HEADERS:
        value = getattr(request, name, None)
        if isinstance(value, str):
            carrier[name] = value
    return carrier


def _on_prerun(task_id: str | None = None, task: Any = None, **_: object) -> None:
    if task_id is None or task is None:
        return
    try:
        request = task.request
        parent = tracing.extract(_carrier(request))
        otel_span = None
        if tracing.enabled():
            delivery = getattr(request, "delivery_info", None) or {}
            queue = delivery.get("routing_key") or ""
            otel_span = tracing.start_span(
                f"process {task.name}",
                kind=tracing.CONSUMER,
                parent=parent if parent is not None else tracing.empty_context(),
                attributes={
                    tracing.MESSAGING_SYSTEM: "celery",
                    tracing.MESSAGING_OPERATION_NAME: "process",
                    tracing.MESSAGING_OPERATION_TYPE: "process",
                    tracing.MESSAGING_DESTINATION_NAME: str(queue),
                    tracing.MESSAGING_MESSAGE_ID: str(task_id),
                    tracing.FLEET_TASK_NAME: str(task.name),
                },
            )
        if otel_span is not None:
            token = tracing.attach(tracing.context_with(otel_span))
        elif parent is not None:
            token = tracing.attach(parent)
        else:
            return
        _open[task_id] = (token, otel_span)
    except Exception:  # noqa: BLE001 - tracing must never stop a task from running
        log.exception("tracing: could not open the span of task %s", task_id)


def _on_failure(
    task_id: str | None = None, exception: BaseException | None = None, **_: object
) -> None:
    held = _open.get(task_id or "")
    if held is None or held[1] is None or exception is None:
        return
    tracing.set_error(held[1], exception)


def _on_postrun(task_id: str | None = None, state: str | None = None, **_: object) -> None:
    held = _open.pop(task_id or "", None)
    if held is None:
        return
    token, otel_span = held
    try:
        if otel_span is not None:
            if state is not None:
                otel_span.set_attribute(tracing.FLEET_TASK_STATE, state)
            otel_span.end()
        tracing.detach(token)
    except Exception:  # noqa: BLE001 - e.g. a context detached on another thread
        log.debug("tracing: closing the span of task %s", task_id, exc_info=True)
