"""Alerts: recorded once per condition, acted on, resolved when the condition clears.

:func:`apply_changes` takes the changes the rules produced (fired, resolved),
and in order:

1. records them in the database: a fired change opens an alert unless one is
   already open for the same rule and subject (``open_key`` is unique), a
   resolved change closes the open one; only what really opened or closed
   goes on, so a redelivered batch notifies nobody twice;
2. carries out the rule's actions: pause the agent (only an active one),
   cut its traffic share (restored on resolve if nobody changed it since),
   freeze the fleet's provisioning (lifted on resolve only if this rule set it);
   each recorded in the audit trail;
3. hands over: ``escalate`` for the agent alerts whose rule escalates, and
   ``notify`` with every alert id opened or closed (webhook delivery runs
   elsewhere, so a slow webhook never holds the sweep).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fleet import audit
from fleet.clock import utc_from_timestamp
from fleet.durability.control import freeze_provisioning, lift_provisioning_freeze
from fleet.monitoring.models import Alert
from fleet.monitoring.rules import CUT_TRAFFIC, ESCALATE, FREEZE_PROVISIONING, PAUSE, Change
from fleet.storage.db import write_session
from fleet.storage.records import Agent, AgentStatus

log = logging.getLogger(__name__)

ACTOR = "fleet-commander/monitoring"
# The provisioning freeze this module sets carries this prefix, so a resolve
# lifts only its own freeze, never one an operator set.
FREEZE_REASON_PREFIX = "alert:fleet.emergency"


@dataclass(frozen=True)
class Handoff:
    """Where alerts go after they are recorded (the task layer sends messages)."""

    notify: Callable[[list[str]], None]  # alert ids, opened or resolved
    escalate: Callable[[list[tuple[str, str]]], None]  # (agent_id, "alert:<rule>")
    traffic_cut_fraction: float = 0.5


def open_key(rule: str, subject: str) -> str:
    return f"{rule}|{subject}"


def _chunks(items: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _message(change: Change) -> str:
    what = change.rule.summary or change.rule.name
    if not change.fired:
        return f"resolved: {what} ({change.subject})"
    value = f" (value {change.value}" + (
        f", threshold {change.threshold})" if change.threshold else ")"
    )
    return f"{what}: {change.subject}{value}"


def _record(
    session: Session, fired: list[Change], resolved: list[Change]
) -> tuple[list[Alert], list[Alert]]:
    opened: list[Alert] = []
    keys = [c.open_key for c in fired]
    existing: set[str] = set()
    for chunk in _chunks(keys):
        existing.update(session.scalars(select(Alert.open_key).where(Alert.open_key.in_(chunk))))
    seen: set[str] = set()
    for c in fired:
        if c.open_key in existing or c.open_key in seen:
            continue
        seen.add(c.open_key)
        alert = Alert(
            alert_id=uuid.uuid4().hex,
            rule=c.rule.name,
            scope=c.scope,
            subject=c.subject,
            fleet=c.fleet,
            severity=c.rule.severity,
            audience=c.rule.audience,
            open_key=c.open_key,
            value=c.value,
            threshold=c.threshold,
            message=_message(c),
            since=utc_from_timestamp(c.since),
            fired_at=utc_from_timestamp(c.at),
            actions={},
        )
        session.add(alert)
        opened.append(alert)
    closed: list[Alert] = []
    by_key = {c.open_key: c for c in resolved}
    for chunk in _chunks(list(by_key)):
        for alert in session.scalars(select(Alert).where(Alert.open_key.in_(chunk))):
            change = by_key[alert.open_key or ""]
            alert.open_key = None
            alert.resolved_at = utc_from_timestamp(change.at)
            closed.append(alert)
    session.flush()
    return opened, closed


def _pause(session: Session, alerts: list[Alert], now: datetime) -> list[Alert]:
    ids = [a.subject for a in alerts]
    paused: set[str] = set()
    for chunk in _chunks(ids):
        paused.update(
            session.scalars(
                select(Agent.agent_id).where(
                    Agent.agent_id.in_(chunk), Agent.status == AgentStatus.ACTIVE
                )
            )
        )
        session.execute(
            update(Agent)
            .where(Agent.agent_id.in_(chunk), Agent.status == AgentStatus.ACTIVE)
            .values(status=AgentStatus.PAUSED, updated_at=now)
        )
    done = []
    for alert in alerts:
        if alert.subject in paused:
            paused.discard(alert.subject)
            alert.actions = {**alert.actions, "paused": True}
            done.append(alert)
    return done


def _cut_traffic(
    session: Session, alerts: list[Alert], fraction: float, now: datetime
) -> list[Alert]:
    done = []
    for alert in alerts:
        agent = session.get(Agent, alert.subject)
        if agent is None:
            continue
        try:
            before = Decimal(agent.traffic_weight)
        except InvalidOperation:
            continue
        after = format((before * (Decimal(1) - Decimal(str(fraction)))).normalize(), "f")
        alert.actions = {
            **alert.actions,
            "traffic_weight": {"from": agent.traffic_weight, "to": after},
        }
        agent.traffic_weight, agent.updated_at = after, now
        done.append(alert)
    return done


def _restore_traffic(session: Session, alerts: list[Alert], now: datetime) -> list[Alert]:
    done = []
    for alert in alerts:
        cut = (alert.actions or {}).get("traffic_weight")
        if not cut:
            continue
        # Only if nobody (tier 2, an operator) changed the weight since our cut.
        result = session.execute(
            update(Agent)
            .where(Agent.agent_id == alert.subject, Agent.traffic_weight == cut["to"])
            .values(traffic_weight=cut["from"], updated_at=now)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            alert.actions = {**alert.actions, "traffic_restored": True}
            done.append(alert)
    return done


def apply_changes(
    sessions: sessionmaker[Session],
    changes: Sequence[Change],
    handoff: Handoff,
    now: float,
) -> tuple[list[Alert], list[Alert]]:
    """Record, act, hand over (see the module docstring); returns (opened, resolved)."""
    fired = [c for c in changes if c.fired]
    resolved = [c for c in changes if not c.fired]
    when = utc_from_timestamp(now)
    for attempt in (1, 2):
        try:
            with write_session(sessions) as session:
                opened, closed = _record(session, fired, resolved)
                want = {
                    name: [a for a in opened if name in _actions(a, changes)]
                    for name in (PAUSE, CUT_TRAFFIC)
                }
                paused = _pause(session, want[PAUSE], when) if want[PAUSE] else []
                cut = (
                    _cut_traffic(session, want[CUT_TRAFFIC], handoff.traffic_cut_fraction, when)
                    if want[CUT_TRAFFIC]
                    else []
                )
                restored = _restore_traffic(session, closed, when)
                # In the same transaction as the alert: a freeze is never without its alert.
                freezes, unfreezes = _provisioning(session, opened, closed, changes, when)
            break
        except IntegrityError:
            # Another worker opened one of these alerts between our check and insert: look again.
            if attempt == 2:
                raise
    _audit(paused, cut, restored, freezes, unfreezes, now)
    escalations = [
        (a.subject, f"alert:{a.rule}")
        for a in opened
        if a.scope == "agent" and ESCALATE in _actions(a, changes)
    ]
    if escalations:
        handoff.escalate(escalations)
    ids = [a.alert_id for a in (*opened, *closed)]
    if ids:
        handoff.notify(ids)
    return opened, closed


def _actions(alert: Alert, changes: Sequence[Change]) -> tuple[str, ...]:
    for c in changes:
        if c.rule.name == alert.rule:
            return c.rule.actions
    return ()


def _provisioning(
    session: Session,
    opened: list[Alert],
    closed: list[Alert],
    changes: Sequence[Change],
    now: datetime,
) -> tuple[list[Alert], list[Alert]]:
    freezes, unfreezes = [], []
    for alert in opened:
        if FREEZE_PROVISIONING in _actions(alert, changes) and alert.fleet:
            freeze_provisioning(
                session, alert.fleet, f"{FREEZE_REASON_PREFIX}:{alert.alert_id}", now
            )
            freezes.append(alert)
    for alert in closed:
        if FREEZE_PROVISIONING in _actions(alert, changes) and alert.fleet:
            if lift_provisioning_freeze(session, alert.fleet, only_prefix=FREEZE_REASON_PREFIX):
                unfreezes.append(alert)
    return freezes, unfreezes


def _audit(
    paused: list[Alert],
    cut: list[Alert],
    restored: list[Alert],
    freezes: list[Alert],
    unfreezes: list[Alert],
    now: float,
) -> None:
    if not (paused or cut or restored or freezes or unfreezes):
        return
    when = utc_from_timestamp(now)
    with audit.batch():
        for alert, action in (
            *((a, "pause_agent") for a in paused),
            *((a, "reroute_traffic") for a in cut),
            *((a, "restore_traffic") for a in restored),
        ):
            audit.record(
                actor=ACTOR,
                action=action,
                subject=alert.subject,
                fleet=alert.fleet,
                details={
                    "alert_id": alert.alert_id,
                    "rule": alert.rule,
                    "value": alert.value,
                    **(
                        {"traffic_weight": alert.actions["traffic_weight"]}
                        if "traffic_weight" in alert.actions
                        else {}
                    ),
                },
                article=audit.Article.RISK_MANAGEMENT,
                time=when,
            )
        for alert, frozen in (*((a, True) for a in freezes), *((a, False) for a in unfreezes)):
            audit.record(
                actor=ACTOR,
                action="freeze_provisioning" if frozen else "unfreeze_provisioning",
                subject=audit.fleet_subject(alert.fleet or ""),
                fleet=alert.fleet,
                details={"alert_id": alert.alert_id, "rule": alert.rule, "value": alert.value},
                article=audit.Article.RISK_MANAGEMENT,
                time=when,
            )


# --- queries -----------------------------------------------------------------------------


def alert_view(a: Alert) -> dict[str, Any]:
    return {
        "alert_id": a.alert_id,
        "rule": a.rule,
        "scope": a.scope,
        "subject": a.subject,
        "fleet": a.fleet,
        "severity": a.severity,
        "audience": a.audience,
        "state": "open" if a.resolved_at is None else "resolved",
        "value": a.value,
        "threshold": a.threshold,
        "message": a.message,
        "since": a.since.isoformat(),
        "fired_at": a.fired_at.isoformat(),
        "resolved_at": a.resolved_at.isoformat() if a.resolved_at else None,
        "actions": a.actions or {},
    }


def list_alerts(
    sessions: sessionmaker[Session],
    *,
    open_only: bool = True,
    severity: str | None = None,
    subject: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    query = select(Alert).order_by(Alert.fired_at.desc()).limit(limit)
    if open_only:
        query = query.where(Alert.resolved_at.is_(None))
    if severity:
        query = query.where(Alert.severity == severity)
    if subject:
        query = query.where(Alert.subject == subject)
    with sessions() as session:
        return [alert_view(a) for a in session.scalars(query)]


def load_alerts(sessions: sessionmaker[Session], alert_ids: Sequence[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with sessions() as session:
        for chunk in _chunks(list(alert_ids)):
            out.extend(
                alert_view(a)
                for a in session.scalars(select(Alert).where(Alert.alert_id.in_(chunk)))
            )
    order = {aid: i for i, aid in enumerate(alert_ids)}
    return sorted(out, key=lambda a: order.get(a["alert_id"], 0))


def open_counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    from sqlalchemy import func

    with sessions() as session:
        rows = session.execute(
            select(Alert.severity, func.count())
            .where(Alert.resolved_at.is_(None))
            .group_by(Alert.severity)
        )
        return {severity: count for severity, count in rows}


def purge_resolved(session: Session, before: datetime) -> int:
    result = session.execute(
        delete(Alert).where(Alert.resolved_at.is_not(None), Alert.resolved_at < before)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


__all__ = [
    "Handoff",
    "alert_view",
    "apply_changes",
    "list_alerts",
    "load_alerts",
    "open_counts",
    "open_key",
]
