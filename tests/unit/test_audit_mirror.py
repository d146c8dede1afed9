"""The outbox to the gateway, with a scripted gateway: order, no loss, no double send."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fleet.audit.events import build_event, fleet_subject
from fleet.audit.log import AuditFiles, AuditLog
from fleet.audit.mirror import Outbox
from fleet.clock import ManualClock
from fleet.gateway import BadInput, CircuitOpen, NotFound, RateLimited, TraceContext, Unavailable
from fleet.storage.db import create_db_engine, migrate


class ScriptedGateway:
    """Records what it accepted; fails the way it is told."""

    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.down = False
        self.refuse_agents: set[str] = set()
        self.calls = 0
        self.traces: list[TraceContext | None] = []

    def call(
        self,
        tool: str,
        input: Mapping[str, Any] | None = None,
        *,
        trace: TraceContext | None = None,
    ) -> dict[str, Any]:
        assert tool == "create_audit_trail" and input is not None
        self.calls += 1
        self.traces.append(trace)
        if self.down:
            raise Unavailable("outage", tool=tool, status=503)
        if input["agent_id"] in self.refuse_agents:
            raise NotFound("unknown agent", tool=tool, status=404)
        self.accepted.append(dict(input))
        return {"audit_id": f"aud-{len(self.accepted)}"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture
def log(tmp_path: Path, clock: ManualClock) -> Iterator[AuditLog]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    yield AuditLog(
        engine,
        AuditFiles(tmp_path / "k.pem", tmp_path / "c.jsonl", tmp_path / "a", tmp_path / "r"),
        clock=clock,
    )
    engine.dispose()


def _append(log: AuditLog, clock: ManualClock, subjects: list[str]) -> None:
    log.append(
        [
            build_event(
                actor="t",
                action="restart_agent",
                subject=s,
                details={"n": i},
                clock=clock,
                trace_id="1" * 32,
                span_id=f"{i + 1:016x}",
            )
            for i, s in enumerate(subjects)
        ]
    )


def test_entries_reach_the_gateway_in_order_with_their_chain_position(
    log: AuditLog, clock: ManualClock
) -> None:
    gateway = ScriptedGateway()
    _append(log, clock, [f"seg0-{i:04d}-aaaaaaaa" for i in range(5)])
    run = Outbox(log, owner="w1").run(gateway.call)
    assert (run.delivered, run.pending, run.error) == (5, 0, None)
    assert [a["metadata"]["seq"] for a in gateway.accepted] == [1, 2, 3, 4, 5]
    first = gateway.accepted[0]
    assert (
        first["agent_id"] == "seg0-0000-aaaaaaaa"
        and first["action"] == "restart_agent"
        and first["details"] == {"n": 0}
    )
    assert len(first["metadata"]["hash"]) == 64 and first["metadata"]["chain"] == "main"
    assert gateway.traces[0] == TraceContext("1" * 32, "0000000000000001"), (
        "the gateway call joins the entry's trace"
    )
    assert Outbox(log, owner="w1").run(gateway.call).delivered == 0, "nothing is sent twice"


def test_an_outage_holds_entries_in_place_and_they_follow_in_order_after_it(
    log: AuditLog, clock: ManualClock
) -> None:
    gateway = ScriptedGateway()
    _append(log, clock, [f"seg0-{i:04d}-aaaaaaaa" for i in range(3)])
    Outbox(log, owner="w1").run(gateway.call)
    gateway.down = True
    _append(log, clock, [f"seg1-{i:04d}-aaaaaaaa" for i in range(4)])
    for _ in range(3):
        run = Outbox(log, owner="w1").run(gateway.call)
        assert (
            (run.delivered, run.pending) == (0, 4)
            and run.error is not None
            and "outage" in run.error
        )
    gateway.down = False
    run = Outbox(log, owner="w2").run(gateway.call)
    assert (run.delivered, run.pending) == (4, 0)
    seqs = [a["metadata"]["seq"] for a in gateway.accepted]
    assert seqs == list(range(1, 8)), "none lost, none twice, in chain order"


@pytest.mark.parametrize(
    "error", [CircuitOpen("open", retry_after=3.0), RateLimited("slow down", retry_after=2.0)]
)
def test_breaker_and_rate_limits_are_waited_out_not_skipped(
    log: AuditLog, clock: ManualClock, error: Exception
) -> None:
    _append(log, clock, ["seg0-0001-aaaaaaaa"])

    def failing(
        tool: str, input: Mapping[str, Any] | None = None, *, trace: TraceContext | None = None
    ) -> dict[str, Any]:
        raise error

    run = Outbox(log, owner="w1").run(failing)
    assert run.pending == 1 and run.retry_after_s is not None


def test_permanent_refusals_are_recorded_and_non_agents_skipped_without_blocking(
    log: AuditLog, clock: ManualClock
) -> None:
    gateway = ScriptedGateway()
    gateway.refuse_agents.add("gone-0001-aaaaaaaa")
    _append(
        log,
        clock,
        ["seg0-0001-aaaaaaaa", "gone-0001-aaaaaaaa", fleet_subject("demo"), "seg0-0002-aaaaaaaa"],
    )
    run = Outbox(log, owner="w1").run(gateway.call)
    assert (run.delivered, run.refused, run.skipped, run.pending) == (2, 1, 1, 0)
    with log.engine.connect() as conn:
        from sqlalchemy import text

        receipts = conn.execute(
            text("SELECT seq, status, audit_id, error FROM audit_mirror_receipts ORDER BY seq")
        ).all()
    assert [(r.seq, r.status) for r in receipts] == [
        (1, "delivered"),
        (2, "refused"),
        (3, "skipped"),
        (4, "delivered"),
    ]
    assert receipts[0].audit_id == "aud-1" and "unknown agent" in receipts[1].error


def test_one_sender_at_a_time_and_a_lapsed_lease_is_taken_over(
    log: AuditLog, clock: ManualClock
) -> None:
    gateway = ScriptedGateway()
    _append(log, clock, ["seg0-0001-aaaaaaaa"])
    holder = Outbox(log, owner="w1", lease_s=60)
    assert holder.acquire()
    assert Outbox(log, owner="w2").run(gateway.call).busy
    clock.advance(61)
    assert Outbox(log, owner="w2").run(gateway.call).delivered == 1
    assert gateway.calls == 1


def test_a_bad_input_refusal_does_not_stop_the_walk(log: AuditLog, clock: ManualClock) -> None:
    _append(log, clock, ["seg0-0001-aaaaaaaa", "seg0-0002-aaaaaaaa"])
    answers = iter([BadInput("details too big", status=400), {"audit_id": "aud-2"}])

    def gateway(
        tool: str, input: Mapping[str, Any] | None = None, *, trace: TraceContext | None = None
    ) -> dict[str, Any]:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    run = Outbox(log, owner="w1").run(gateway)
    assert (run.delivered, run.refused, run.pending) == (1, 1, 0)
