"""The budgets' work on the `routing` queue, done by a real worker process on a real Redis
and SQLite: the spend ledger drained off the hot path, the fleet-day pause recorded and
paged, and resumed only once a HIGH approval is granted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from benchmarks.budget import bench_policy
from fleet.approvals import Approvals, RequestStatus
from fleet.approvals.gate import dispatch_approved
from fleet.budgets import control, ledger
from fleet.budgets.admission import Admitted, Budgets, Charge, Refused, pause_message
from fleet.budgets.control import PAUSE_RULE, RESUME_ACTION
from fleet.budgets.models import SpendEntry, SpendingPause
from fleet.clock import SystemClock
from fleet.hotstate import connect
from fleet.monitoring.models import Alert
from stack.local import Stack, local_stack
from stack.parts import wait_until
from tests.support.fleet_rows import sessions_for
from workers.queues import TaskName

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(tmp_path_factory.mktemp("budgets")) as st:
        st.start_worker(["routing"], concurrency=2, name="routing")
        yield st


def _send(stack: Stack, name: str, kwargs: dict[str, Any]) -> None:
    stack.celery().send_task(name, kwargs=kwargs)


def test_settled_spends_land_in_the_ledger_through_the_routing_worker(stack: Stack) -> None:
    r = connect(stack.settings.redis_url)
    budgets = Budgets(r, bench_policy(Decimal("100.00")), SystemClock())
    fleet = f"led-{uuid.uuid4().hex[:6]}"
    for i in range(120):
        charge = Charge(f"{fleet}-t{i}", f"a{i % 7}", fleet, Decimal("0.03"), "frontier",
                        trace_id=f"{i:032x}")  # fmt: skip
        assert isinstance(budgets.reserve(charge), Admitted)
        budgets.settle(charge.task_id, Decimal("0.021"), charged=Decimal("0.10"), usage={"t": i})
    assert ledger.pending(r) >= 120, "queued in Redis, nothing written on the hot path"
    _send(stack, TaskName.BUDGET_DRAIN_LEDGER, {})
    sessions = sessions_for(stack.settings.sqlalchemy_url)

    def rows() -> list[SpendEntry]:
        with sessions() as s:
            found = list(s.scalars(select(SpendEntry).where(SpendEntry.fleet == fleet)))
        return found if len(found) == 120 else []

    landed = wait_until(rows, timeout_s=30)
    assert isinstance(landed, list)
    assert {(e.estimate, e.actual, e.charged, e.currency) for e in landed} == {
        ("0.03", "0.021", "0.1", "USD")
    }
    assert {e.trace_id for e in landed} == {f"{i:032x}" for i in range(120)}
    assert ledger.totals(sessions, fleet=fleet)["actual"] == "2.520"
    # A second drain (a redelivery) writes nothing twice.
    _send(stack, TaskName.BUDGET_DRAIN_LEDGER, {})
    wait_until(lambda: ledger.pending(r) == 0, timeout_s=30)
    assert ledger.totals(sessions, fleet=fleet)["entries"] == 120


def test_the_fleet_day_pause_is_paged_and_lifts_only_under_a_high_approval(
    stack: Stack, tmp_path: Path
) -> None:
    r = connect(stack.settings.redis_url)
    sessions = sessions_for(stack.settings.sqlalchemy_url)
    fleet = f"pause-{uuid.uuid4().hex[:6]}"
    budgets = Budgets(
        r,
        bench_policy(Decimal("0.10"), per_agent_hour=Decimal("10.00")),
        SystemClock(),
        on_pause=lambda e: _send(stack, TaskName.BUDGET_RECORD_PAUSE, {"pause": pause_message(e)}),
    )
    answers = [
        budgets.reserve(Charge(f"{fleet}-{i}", "a1", fleet, Decimal("0.03"), "frontier"))
        for i in range(6)
    ]
    assert [a.budget for a in answers if isinstance(a, Refused)] == [
        "fleet_day",
        "spending_paused",
        "spending_paused",
    ]

    def paused_row() -> SpendingPause | None:
        with sessions() as s:
            return s.get(SpendingPause, fleet)

    row = wait_until(paused_row, timeout_s=30)
    assert isinstance(row, SpendingPause) and row.alert_id
    with sessions() as s:
        alert = s.get(Alert, row.alert_id)
        assert alert is not None
        assert (alert.rule, alert.audience, alert.scope, alert.subject) == (
            PAUSE_RULE.name,
            "page",
            "fleet",
            fleet,
        )
        assert alert.resolved_at is None

    # Asked without an approval: a HIGH request opens, nothing is lifted.
    _send(stack, TaskName.BUDGET_RESUME, {"fleet": fleet, "requested_by": "ops-a"})
    approvals = Approvals(
        sessions, stack.settings.policy.approvals, clock=SystemClock(), emit=lambda _e: None
    )

    def pending() -> Any:
        return [
            v
            for v in approvals.list_requests(status=RequestStatus.PENDING)
            if v.action == RESUME_ACTION and v.fleet == fleet
        ]

    (request,) = wait_until(pending, timeout_s=30)  # type: ignore[misc]
    assert request.risk.value == "HIGH"
    assert budgets.spending_paused(fleet)
    approvals.approve(request.request_id, "ops-b")
    dispatch_approved(approvals, lambda msgs: [_send(stack, n, k) for n, k in msgs])
    wait_until(lambda: not budgets.spending_paused(fleet), timeout_s=30)
    assert paused_row() is None
    with sessions() as s:
        alert = s.get(Alert, row.alert_id)
        assert alert is not None and alert.resolved_at is not None
    assert approvals.get(request.request_id).status is RequestStatus.EXECUTED
    # The fleet's day is still full: the next reservation that does not fit pauses it again.
    again = budgets.reserve(Charge(f"{fleet}-after", "a1", fleet, Decimal("0.03"), "frontier"))
    assert isinstance(again, Refused) and again.budget == "fleet_day"

    # Raising the ceiling is HIGH as well; once approved, the next reservation fits.
    _send(
        stack,
        TaskName.BUDGET_RAISE,
        {"budget": "fleet_day", "subject": fleet, "limit": "1.00", "requested_by": "ops-a"},
    )

    def raise_pending() -> Any:
        return [
            v
            for v in approvals.list_requests(status=RequestStatus.PENDING)
            if v.action == control.RAISE_ACTION and v.subject == f"fleet_day:{fleet}"
        ]

    (ask,) = wait_until(raise_pending, timeout_s=30)  # type: ignore[misc]
    approvals.approve(ask.request_id, "ops-b")
    _send(stack, TaskName.BUDGET_RESUME, {"fleet": fleet, "requested_by": "ops-a"})
    (resume_ask,) = wait_until(pending, timeout_s=30)  # type: ignore[misc]
    approvals.approve(resume_ask.request_id, "ops-b")
    dispatch_approved(approvals, lambda msgs: [_send(stack, n, k) for n, k in msgs])
    wait_until(lambda: not budgets.spending_paused(fleet), timeout_s=30)
    wait_until(lambda: r.hget("fleet:budget:limits", f"fleet_day:{fleet}") == "1000000", 30)
    fits = budgets.reserve(Charge(f"{fleet}-raised", "a1", fleet, Decimal("0.03"), "frontier"))
    assert isinstance(fits, Admitted), fits
