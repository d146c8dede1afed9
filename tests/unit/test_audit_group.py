"""Group commit: concurrent producers share messages, and nobody returns before their event is
sent."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from fleet.audit import build_event
from fleet.audit.events import AuditEvent
from fleet.audit.group import GroupSink


def event(i: int) -> AuditEvent:
    return build_event(
        actor="test", action="provision_agent", subject=f"agent-{i}", details={"i": i}
    )


def test_concurrent_events_share_messages_and_all_arrive() -> None:
    sent: list[list[AuditEvent]] = []
    sink = GroupSink(lambda batch: sent.append(list(batch)), gather_s=0.02)
    start = threading.Barrier(40)

    def produce(i: int) -> None:
        start.wait()
        sink([event(i)])

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    delivered = [e.subject for batch in sent for e in batch]
    assert sorted(delivered) == sorted(f"agent-{i}" for i in range(40))
    assert len(sent) < 40 / 4, f"{len(sent)} messages for 40 events: not grouped"


def test_a_failed_send_reaches_every_waiting_caller() -> None:
    def broken(batch: Sequence[AuditEvent]) -> None:
        raise ConnectionError("broker down")

    sink = GroupSink(broken, gather_s=0.0)
    with pytest.raises(ConnectionError):
        sink([event(1)])
