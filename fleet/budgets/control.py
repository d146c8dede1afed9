"""What operators do with budgets, off the hot path: the pause's record and page, resuming
and raising (HIGH, through fleet.approvals), and keeping Redis true to the database.

* When the fleet-day ceiling pauses a fleet (the reserve script sets the flag in Redis),
  :func:`record_pause` stores the pause (table ``spending_pauses``), opens a fleet alert
  ``budget.fleet_day`` for the ``page`` audience (delivered by ``metrics.deliver_alerts``
  to ``alerts.routes.page`` and ``alerts.webhooks``, as every alert is) and audits it.
* Resuming (:func:`request_resume`) and raising a budget (:func:`request_raise`) are the
  actions ``resume_spending`` and ``raise_budget`` (HIGH in the approval matrix): nothing
  changes until an approver other than the requester approves; the approvals sweep then
  sends the task again with ``approval_id`` and :func:`resume` / :func:`raise_limit`
  claim it and act.
* :func:`sync` (beat) re-asserts every pause and raised limit from the database into
  Redis (a Redis that lost them would otherwise admit), and records a pause Redis holds
  that the database does not know (its page was lost).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from redis.exceptions import RedisError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fleet import audit
from fleet.approvals import Approvals, Gate
from fleet.approvals.gate import Held, clear
from fleet.budgets.admission import (
    BUDGET_NAMES,
    LIMITS_KEY,
    PREFIX,
    Budgets,
    PauseEvent,
    limit_field,
    pause_key,
    to_micros,
)
from fleet.budgets.models import BudgetLimit, SpendingPause
from fleet.clock import Clock
from fleet.monitoring.alerts import Handoff, apply_changes
from fleet.monitoring.models import Alert
from fleet.monitoring.rules import Change, Rule
from fleet.storage.db import write_session

log = logging.getLogger(__name__)

ACTOR = "fleet-commander/budgets"
RESUME_ACTION = "resume_spending"
RAISE_ACTION = "raise_budget"
PAUSE_RULE = Rule(
    name="budget.fleet_day",
    severity="emergency",
    audience="page",
    summary="fleet-day spending ceiling reached; spending paused until a HIGH approval resumes it",
)


@dataclass(frozen=True)
class ControlDeps:
    budgets: Budgets
    sessions: sessionmaker[Session]
    approvals: Approvals
    clock: Clock
    notify: Callable[[list[str]], None]  # alert ids to deliver (metrics.deliver_alerts)


class BudgetRequestError(ValueError):
    """A resume or raise that cannot be asked for (names the problem)."""


def _handoff(deps: ControlDeps) -> Handoff:
    return Handoff(notify=deps.notify, escalate=lambda _pairs: None)


def _change(fleet: str, fired: bool, now: float, limit: str, would_be: str) -> Change:
    return Change(
        rule=PAUSE_RULE,
        fired=fired,
        subject=fleet,
        since=now,
        at=now,
        value=would_be,
        threshold=limit,
        fleet=fleet,
        scope="fleet",
    )


# ---------------------------------------------------------------------------- the pause


def record_pause(deps: ControlDeps, event: PauseEvent) -> bool:
    """Store the pause, page the operators, audit it; False when it was recorded before."""
    when = datetime.fromtimestamp(event.at, tz=deps.clock.now().tzinfo)
    limit, would_be = format(event.limit, "f"), format(event.would_be, "f")
    with deps.sessions() as s:
        if s.get(SpendingPause, event.fleet) is not None:
            return False
    # The alert first (one per open condition, whoever races us), then the pause naming it:
    # a pause row is never seen without its page.
    change = _change(event.fleet, True, event.at, limit, would_be)
    opened, _ = apply_changes(deps.sessions, [change], _handoff(deps), event.at)
    alert_id = opened[0].alert_id if opened else _open_alert_id(deps.sessions, event.fleet)
    try:
        with write_session(deps.sessions) as s:
            s.add(
                SpendingPause(
                    fleet=event.fleet,
                    reason=f"fleet-day ceiling {limit} reached: {would_be} with task "
                    f"{event.task_id}",
                    limit=limit,
                    would_be=would_be,
                    paused_at=when,
                    alert_id=alert_id,
                )
            )
    except IntegrityError:
        return False  # recorded meanwhile by another delivery
    audit.record(
        actor=ACTOR,
        action="spending_paused",
        subject=audit.fleet_subject(event.fleet),
        fleet=event.fleet,
        details={
            "budget": "fleet_day",
            "limit": limit,
            "would_be": would_be,
            "task_id": event.task_id,
            "alert_id": alert_id,
        },
        article=audit.Article.RISK_MANAGEMENT,
        trace_id=event.trace_id,
        time=when,
    )
    return True


def pause_spending(deps: ControlDeps, fleet: str, by: str, reason: str) -> dict[str, Any]:
    """An operator pauses a fleet's spending at once (stopping spend is never gated):
    every later reservation is refused ``spending_paused`` until a HIGH approval resumes
    it, as after the ceiling. The database first, so the sync re-asserts it in Redis."""
    fleet, by, reason = fleet.strip(), by.strip(), reason.strip()
    if not fleet:
        raise BudgetRequestError("fleet: must not be empty")
    if not by:
        raise BudgetRequestError("by: who pauses must be named")
    if not reason:
        raise BudgetRequestError("reason: must not be empty (say why, it is audited)")
    now = deps.clock.now()
    why = f"paused by {by}: {reason}"[:500]
    try:
        with write_session(deps.sessions) as s:
            if s.get(SpendingPause, fleet) is not None:
                return {"status": "already-paused", "fleet": fleet}
            s.add(
                SpendingPause(
                    fleet=fleet, reason=why, limit="", would_be="", paused_at=now, alert_id=None
                )
            )
    except IntegrityError:
        return {"status": "already-paused", "fleet": fleet}
    try:
        deps.budgets.redis.set(pause_key(fleet), why, nx=True)
        in_store = True
    except RedisError as exc:
        # The pause is recorded: the beat's sync sets it once the store answers, and a
        # store that does not answer refuses every admission meanwhile.
        log.warning("spending pause of %s not yet in the budget store: %s", fleet, exc)
        in_store = False
    audit.record(
        actor=by,
        action="spending_paused",
        subject=audit.fleet_subject(fleet),
        fleet=fleet,
        details={"by": by, "reason": reason},
        article=audit.Article.HUMAN_OVERSIGHT,
        time=now,
    )
    return {
        "status": "paused",
        "fleet": fleet,
        "reason": why,
        "paused_at": now.isoformat(),
        "in_store": in_store,
    }


def _open_alert_id(sessions: sessionmaker[Session], fleet: str) -> str | None:
    with sessions() as s:
        return s.scalar(
            select(Alert.alert_id).where(Alert.open_key == f"{PAUSE_RULE.name}|{fleet}")
        )


def pauses(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    with sessions() as s:
        return [
            {
                "fleet": p.fleet,
                "reason": p.reason,
                "limit": p.limit,
                "would_be": p.would_be,
                "paused_at": p.paused_at.isoformat(),
                "alert_id": p.alert_id,
            }
            for p in s.scalars(select(SpendingPause).order_by(SpendingPause.paused_at))
        ]


# ---------------------------------------------------------------------------- resume


def request_resume(
    deps: ControlDeps, fleet: str, requested_by: str, *, reason: str, task: str
) -> Gate:
    """Ask to lift ``fleet``'s spending pause (HIGH): returns the pending gate."""
    if not fleet:
        raise BudgetRequestError("fleet: must not be empty")
    return deps.approvals.request(
        RESUME_ACTION,
        audit.fleet_subject(fleet),
        requested_by,
        fleet=fleet,
        reason=reason or "resume spending",
        details={"fleet": fleet, "paused": deps.budgets.spending_paused(fleet)},
        task=task,
        task_kwargs={"fleet": fleet, "requested_by": requested_by},
    )


def resume(
    deps: ControlDeps,
    fleet: str,
    approval_id: str | None,
    requested_by: str,
    *,
    task: str,
    reason: str = "",
) -> str:
    """Lift the pause under an approval that names exactly this fleet (claimed once);
    without one, ask for it (``task`` is sent again once it is approved)."""
    passed = clear(
        deps.approvals,
        action=RESUME_ACTION,
        subject=audit.fleet_subject(fleet),
        approval_id=approval_id,
        ask=lambda: request_resume(deps, fleet, requested_by, reason=reason, task=task),
    )
    if isinstance(passed, Held):
        return "awaiting-approval"
    now = deps.clock.now()
    with write_session(deps.sessions) as s:
        row = s.get(SpendingPause, fleet)
        limit, would_be = (row.limit, row.would_be) if row else ("", "")
        s.execute(delete(SpendingPause).where(SpendingPause.fleet == fleet))
    # The database first: a sync between the two re-asserts nothing.
    deps.budgets.redis.delete(pause_key(fleet))
    apply_changes(
        deps.sessions,
        [_change(fleet, False, now.timestamp(), limit, would_be)],
        _handoff(deps),
        now.timestamp(),
    )
    audit.record(
        actor=ACTOR,
        action="spending_resumed",
        subject=audit.fleet_subject(fleet),
        fleet=fleet,
        details={"approvers": list(passed.approvers), "requested_by": requested_by},
        article=audit.Article.HUMAN_OVERSIGHT,
        approval=audit.ApprovalState.APPROVED if approval_id else audit.ApprovalState.NONE,
        approval_id=passed.request_id,
        time=now,
    )
    return "resumed"


# ---------------------------------------------------------------------------- raise


def check_raise(budget: str, subject: str, limit: Decimal) -> str:
    """The limits-hash field a raise writes; BudgetRequestError naming what is wrong."""
    if budget not in BUDGET_NAMES:
        raise BudgetRequestError(
            f"budget: must be one of {', '.join(BUDGET_NAMES)}, got {budget!r}"
        )
    if not subject:
        raise BudgetRequestError("subject: must not be empty ('*' for every agent or fleet)")
    if not limit.is_finite() or limit <= 0:
        raise BudgetRequestError(f"limit: must be a positive amount, got {limit}")
    if limit.as_tuple().exponent < -6:  # type: ignore[operator]
        raise BudgetRequestError(f"limit: at most 6 decimal places, got {limit}")
    return limit_field(budget, subject)


def request_raise(
    deps: ControlDeps,
    budget: str,
    subject: str,
    limit: Decimal,
    requested_by: str,
    *,
    reason: str,
    task: str,
    fleet: str | None = None,
) -> Gate:
    field = check_raise(budget, subject, limit)
    return deps.approvals.request(
        RAISE_ACTION,
        field,
        requested_by,
        fleet=fleet,
        reason=reason or f"raise {budget} of {subject} to {limit}",
        details={"budget": budget, "subject": subject, "limit": format(limit, "f")},
        task=task,
        task_kwargs={
            "budget": budget,
            "subject": subject,
            "limit": format(limit, "f"),
            "requested_by": requested_by,
        },
    )


def raise_limit(
    deps: ControlDeps,
    budget: str,
    subject: str,
    limit: Decimal,
    approval_id: str | None,
    requested_by: str,
    *,
    task: str,
    reason: str = "",
) -> str:
    """Write the raised limit (database, then Redis) under its approval (claimed once);
    without one, ask for it (``task`` is sent again once it is approved)."""
    field = check_raise(budget, subject, limit)
    passed = clear(
        deps.approvals,
        action=RAISE_ACTION,
        subject=field,
        approval_id=approval_id,
        ask=lambda: request_raise(
            deps, budget, subject, limit, requested_by, reason=reason, task=task
        ),
    )
    if isinstance(passed, Held):
        return "awaiting-approval"
    now = deps.clock.now()
    with write_session(deps.sessions) as s:
        row = s.get(BudgetLimit, field)
        if row is None:
            row = BudgetLimit(field=field, budget=budget, subject=subject)
            s.add(row)
        row.limit = format(limit, "f")
        row.approval_id = passed.request_id
        row.raised_by = requested_by
        row.raised_at = now
    deps.budgets.redis.hset(LIMITS_KEY, field, str(to_micros(limit)))
    audit.record(
        actor=ACTOR,
        action="budget_raised",
        subject=field,
        details={
            "budget": budget,
            "subject": subject,
            "limit": format(limit, "f"),
            "approvers": list(passed.approvers),
            "requested_by": requested_by,
        },
        article=audit.Article.HUMAN_OVERSIGHT,
        approval=audit.ApprovalState.APPROVED if approval_id else audit.ApprovalState.NONE,
        approval_id=passed.request_id,
        time=now,
    )
    return "raised"


def raised_limits(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    with sessions() as s:
        return [
            {
                "budget": r.budget,
                "subject": r.subject,
                "limit": r.limit,
                "raised_by": r.raised_by,
                "approval_id": r.approval_id,
                "raised_at": r.raised_at.isoformat(),
            }
            for r in s.scalars(select(BudgetLimit).order_by(BudgetLimit.field))
        ]


# ---------------------------------------------------------------------------- sync


def sync(deps: ControlDeps) -> dict[str, int]:
    """Redis made true to the database: pauses and raised limits re-asserted; a pause
    only Redis holds (its record or page was lost) recorded and paged now."""
    r = deps.budgets.redis
    with deps.sessions() as s:
        paused = {p.fleet: p.reason for p in s.scalars(select(SpendingPause))}
        limits = {row.field: row.limit for row in s.scalars(select(BudgetLimit))}
    pipe = r.pipeline(transaction=False)
    for fleet, reason in paused.items():
        pipe.set(pause_key(fleet), reason, nx=True)
    for field, limit in limits.items():
        pipe.hset(LIMITS_KEY, field, str(to_micros(Decimal(limit))))
    pipe.execute()
    unrecorded = 0
    prefix = f"{PREFIX}paused:"
    for key in cast("list[str]", list(r.scan_iter(match=f"{prefix}*", count=500))):
        fleet = key[len(prefix) :]
        if fleet in paused:
            continue
        state = deps.budgets.state(fleet)
        event = PauseEvent(
            fleet,
            Decimal(state["fleet_day"]["limit"]),
            Decimal(state["fleet_day"]["used"]),
            deps.clock.now().timestamp(),
            "-",
        )
        unrecorded += record_pause(deps, event)
    return {"pauses": len(paused), "limits": len(limits), "recorded": unrecorded}


__all__ = [
    "ACTOR",
    "PAUSE_RULE",
    "RAISE_ACTION",
    "RESUME_ACTION",
    "BudgetRequestError",
    "ControlDeps",
    "check_raise",
    "pauses",
    "raise_limit",
    "raised_limits",
    "record_pause",
    "request_raise",
    "request_resume",
    "resume",
    "sync",
]
