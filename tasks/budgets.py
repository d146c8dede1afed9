"""Tasks of the budgets, on the `routing` queue: each a thin wrapper over fleet.budgets.

Beat sends ``routing.budgets.sweep`` (release reservations whose task vanished; pauses
and raised limits re-asserted in Redis from the database) and
``routing.budgets.drain_ledger`` (queued spend rows written to the database in batches).

``routing.budgets.record_pause`` is sent by the admission that paused a fleet's spending
(its fleet-day ceiling reached): stores the pause, pages the operators, audits it.

``routing.budgets.resume`` and ``routing.budgets.raise_limit`` are HIGH actions: sent
without an ``approval_id`` they open an approval request and do nothing else; the
approvals sweep sends them again with the approved request's id, and they claim it once.
JSON kwargs::

    routing.budgets.resume       {"fleet": "demo", "requested_by": "who", "approval_id": "…"}
    routing.budgets.raise_limit  {"budget": "fleet_day", "subject": "demo", "limit": "3000.00",
                                  "requested_by": "who", "approval_id": "…"}
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from celery.exceptions import Reject

from fleet.approvals import NotApproved
from fleet.budgets import control, ledger
from fleet.budgets.admission import pause_from_message
from fleet.runtime import Runtime
from tasks._base import fleet_task, heartbeat_task, runtime
from workers.queues import FleetQueue, TaskName

heartbeat = heartbeat_task(FleetQueue.ROUTING)


def control_deps(rt: Runtime) -> control.ControlDeps:
    return control.ControlDeps(
        budgets=rt.budgets,
        sessions=rt.sessions,
        approvals=rt.approvals,
        clock=rt.clock,
        notify=lambda ids: rt.send([(TaskName.DELIVER_ALERTS, {"alert_ids": ids})]),
    )


def ledger_deps(rt: Runtime) -> ledger.LedgerDeps:
    return ledger.LedgerDeps(
        redis=rt.redis,
        sessions=rt.sessions,
        lock=rt.lock,
        batch_size=rt.settings.budgets.ledger_batch_size,
    )


@fleet_task(TaskName.BUDGET_SWEEP, ignore_result=False)
def sweep() -> dict[str, int]:
    rt = runtime()
    released = rt.budgets.sweep_expired()
    return {"released": released, **control.sync(control_deps(rt))}


@fleet_task(TaskName.BUDGET_DRAIN_LEDGER, ignore_result=False)
def drain_ledger() -> int:
    return ledger.drain(ledger_deps(runtime()))


@fleet_task(TaskName.BUDGET_RECORD_PAUSE)
def record_pause(pause: dict[str, Any]) -> bool:
    try:
        event = pause_from_message(pause)
    except (KeyError, ValueError, InvalidOperation) as exc:
        raise Reject(f"invalid pause message: {exc}", requeue=False) from None
    return control.record_pause(control_deps(runtime()), event)


@fleet_task(TaskName.BUDGET_RESUME, ignore_result=False)
def resume(
    fleet: str, requested_by: str = "celery", approval_id: str | None = None, reason: str = ""
) -> str:
    try:
        return control.resume(
            control_deps(runtime()),
            fleet,
            approval_id,
            requested_by,
            task=TaskName.BUDGET_RESUME,
            reason=reason,
        )
    except NotApproved as exc:
        raise Reject(f"{exc}; request one with `fleet budget resume`", requeue=False) from None


@fleet_task(TaskName.BUDGET_RAISE, ignore_result=False)
def raise_limit(
    budget: str,
    subject: str,
    limit: str,
    requested_by: str = "celery",
    approval_id: str | None = None,
    reason: str = "",
) -> str:
    try:
        amount = Decimal(str(limit))
        return control.raise_limit(
            control_deps(runtime()),
            budget,
            subject,
            amount,
            approval_id,
            requested_by,
            task=TaskName.BUDGET_RAISE,
            reason=reason,
        )
    except (InvalidOperation, control.BudgetRequestError) as exc:
        raise Reject(f"invalid budget raise: {exc}", requeue=False) from None
    except NotApproved as exc:
        raise Reject(f"{exc}; request one with `fleet budget raise`", requeue=False) from None
