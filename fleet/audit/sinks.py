"""Where recorded events go: one sink per process, installed by whoever runs it.

Worker, API and CLI processes install it from their runtime
(``Runtime.install_audit_sink``): events go to the ``audit`` queue. Tests use
:func:`capture`. With no sink installed :func:`emit` raises instead of dropping
an entry on the floor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from fleet.audit.events import AuditEvent, build_event

Sink = Callable[[Sequence[AuditEvent]], None]


class AuditNotConfigured(RuntimeError):
    pass


_sink: Sink | None = None
_pending: ContextVar[list[AuditEvent] | None] = ContextVar("fleet_audit_pending", default=None)


def use_sink(sink: Sink | None) -> Sink | None:
    """Install the process's sink; returns the one it replaces."""
    global _sink
    previous, _sink = _sink, sink
    return previous


def current_sink() -> Sink | None:
    return _sink


def emit(events: Sequence[AuditEvent]) -> None:
    pending = _pending.get()
    if pending is not None:
        pending.extend(events)
        return
    if _sink is None:
        raise AuditNotConfigured(
            "no audit sink is installed: start the process's runtime "
            "(Runtime.install_audit_sink) or use fleet.audit.capture() in tests"
        )
    _sink(list(events))


def record(**fields: Any) -> AuditEvent:
    """Build an event (see :func:`fleet.audit.events.build_event`) and send it to the sink."""
    event = build_event(**fields)
    emit([event])
    return event


@contextmanager
def batch() -> Iterator[list[AuditEvent]]:
    """Hold back every event recorded inside, and send them as one message at the end.

    The events are sent even when the block raises: what was recorded did
    happen. A nested batch joins the outer one.
    """
    outer = _pending.get()
    if outer is not None:
        yield outer
        return
    events: list[AuditEvent] = []
    token = _pending.set(events)
    try:
        yield events
    finally:
        _pending.reset(token)
        if events:
            emit(events)


@contextmanager
def capture() -> Iterator[list[AuditEvent]]:
    """For tests: every event recorded inside lands in the yielded list."""
    events: list[AuditEvent] = []
    previous = use_sink(events.extend)
    try:
        yield events
    finally:
        use_sink(previous)
