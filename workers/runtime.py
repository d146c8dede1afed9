"""The process's runtime (fleet/runtime.py) with the broker's side plugged in, and its one accessor.

Workers build it when their process starts (workers/signals.py), the API in
its lifespan, the CLI on demand (:func:`on_demand`), tests through their
fixture. Tasks read it with :func:`runtime`.
"""

from __future__ import annotations

import atexit
import functools
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import redis
from celery import Celery

from config.settings import Settings, get_settings
from fleet.audit.events import AuditEvent
from fleet.clock import clock_from
from fleet.hotstate import connect
from fleet.runtime import Message, Runtime, build_runtime
from workers.queues import TaskName


class RuntimeNotStarted(RuntimeError):
    pass


_current: Runtime | None = None


def runtime() -> Runtime:
    """This process's runtime; raises when nothing started one."""
    if _current is None:
        raise RuntimeNotStarted(
            "no runtime in this process: workers build it at process start, the API in its "
            "lifespan, the CLI with workers.runtime.on_demand(), tests with the `runtime` fixture"
        )
    return _current


def send_messages(celery_app: Celery, messages: Sequence[Message]) -> None:
    """Send tasks by name, every message over one producer connection; routes come from the name."""
    if not messages:
        return
    with celery_app.producer_or_acquire() as producer:
        for name, kwargs in messages:
            celery_app.send_task(name, kwargs=kwargs, producer=producer, ignore_result=True)


# Audit messages on their way: a message Redis hands to a worker that is SIGKILLed before
# kombu records it as unacknowledged is gone from the broker, so the producer keeps each
# message here until the audit worker has appended it (the log keeps an event once).
AUDIT_IN_FLIGHT = "fleet:audit:in-flight"


def enqueue_audit(
    celery_app: Celery, batch_size: int, r: redis.Redis, events: Sequence[AuditEvent]
) -> None:
    """Send events to the audit queue, ``batch_size`` per ``audit.append_batch`` message,
    each kept in :data:`AUDIT_IN_FLIGHT` until appended."""
    batch = list(events)
    with celery_app.producer_or_acquire() as producer:
        for start in range(0, len(batch), batch_size):
            payload = [e.model_dump(mode="json") for e in batch[start : start + batch_size]]
            _send_audit(celery_app, producer, r, payload)


# A message sent again this many times without being appended is left to the dead letters.
AUDIT_RESENDS = 3


def _send_audit(
    celery_app: Celery, producer: Any, r: redis.Redis, payload: list[Any], resent: int = 0
) -> None:
    task_id = uuid.uuid4().hex
    r.hset(AUDIT_IN_FLIGHT, task_id, orjson.dumps({"events": payload, "resent": resent}))
    celery_app.send_task(
        TaskName.AUDIT_APPEND_BATCH,
        args=(payload,),
        task_id=task_id,
        producer=producer,
        ignore_result=True,
    )


def resend_audit_in_flight(celery_app: Celery, r: redis.Redis) -> int:
    """Send again every audit message not yet appended (an audit worker starting: one may
    have been lost with a worker that died). Each goes under a new id; a copy that was not
    lost is appended once all the same."""
    resent = 0
    with celery_app.producer_or_acquire() as producer:
        for task_id, raw in r.hgetall(AUDIT_IN_FLIGHT).items():
            if not r.hdel(AUDIT_IN_FLIGHT, task_id):
                continue  # another starting worker re-sends it
            kept = orjson.loads(raw)
            if kept["resent"] >= AUDIT_RESENDS:
                continue  # it never appends (a poison message): the dead letters hold it
            _send_audit(celery_app, producer, r, kept["events"], kept["resent"] + 1)
            resent += 1
    return resent


def celery_runtime(celery_app: Celery, settings: Settings) -> Runtime:
    """A runtime whose messages and audit events go through ``celery_app``'s broker."""
    return build_runtime(
        settings,
        send=functools.partial(send_messages, celery_app),
        enqueue_audit=functools.partial(
            enqueue_audit,
            celery_app,
            settings.policy.audit.batch_size,
            connect(settings.redis_url),
        ),
        alert_task=TaskName.DELIVER_ALERTS,
        escalate_task=TaskName.SLA_EVALUATE_AGENT,
        clock=clock_from(settings.clock_offset_file),
    )


def start(celery_app: Celery, settings: Settings, *, grouped_audit: bool = False) -> Runtime:
    """Build this process's runtime, install its audit sink and make it the current one."""
    global _current
    stop()
    _current = celery_runtime(celery_app, settings)
    _current.install_audit_sink(grouped=grouped_audit)
    return _current


def use(rt: Runtime | None) -> Runtime | None:
    """Make ``rt`` the current runtime (the API's lifespan, tests); returns the one it replaces."""
    global _current
    previous, _current = _current, rt
    return previous


def stop() -> None:
    """Close the current runtime, if any."""
    global _current
    rt, _current = _current, None
    if rt is not None:
        rt.close()


def on_demand(celery_app: Celery) -> Runtime:
    """For CLI commands: the current runtime, built from the settings the first time."""
    if _current is not None:
        return _current
    atexit.register(stop)
    return start(celery_app, get_settings())
