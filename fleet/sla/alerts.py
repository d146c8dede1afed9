"""Burn-rate alerts, evaluated every minute: fire once, notify, resolve when the burn stops.

Per fleet and per agent, each rule of ``error_budget.burn_alerts`` (see
:mod:`fleet.sla.budget`). A firing alert is a row in ``sla_burn_alerts`` whose
``open_key`` (scope|rule) is unique while it fires, so two evaluators never
fire it twice; it resolves when either window drops under the factor. Fleet
alerts message the operator (``page`` → urgent, ``ticket`` → normal); agent
alerts are recorded and exposed, and notify only with ``notify_agent_alerts``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy
from fleet import audit
from fleet.audit.events import fleet_subject
from fleet.clock import Clock
from fleet.gateway import Auth, Gateway, GatewayError
from fleet.gateway import operations as ops
from fleet.sla.budget import BurnAlertState, evaluate_burn, fleet_sizes, load_intervals
from fleet.sla.models import SlaBurnAlert
from fleet.storage.db import write_session

log = logging.getLogger(__name__)

ACTOR = "fleet-commander/sla"


@dataclass
class AlertDeps:
    sessions: sessionmaker[Session]
    policy: Policy
    clock: Clock
    gateway: Gateway | None  # None: record only
    record: Callable[..., Any] = audit.record
    # settings.gateway: notices go from the admin key's agent to the operator's inbox.
    admin_agent_id: str = "fleet-admin"
    operator_agent_id: str = "fleet-operator"


@dataclass
class AlertRun:
    fired: list[tuple[str, str]] = field(default_factory=list)
    resolved: list[tuple[str, str]] = field(default_factory=list)
    firing: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "fired": [f"{s} {r}" for s, r in self.fired],
            "resolved": [f"{s} {r}" for s, r in self.resolved],
            "firing": self.firing,
        }


def _key(scope: str, rule: str) -> str:
    return f"{scope}|{rule}"[:240]


def current_states(deps: AlertDeps, now: datetime) -> dict[tuple[str, str], BurnAlertState]:
    """(scope, rule) → state, for every scope that burns at all."""
    policy = deps.policy.error_budget
    if not policy.burn_alerts:
        return {}
    longest = max(a.long_window_s for a in policy.burn_alerts)
    data = load_intervals(deps.sessions, now - timedelta(seconds=longest))
    sizes = fleet_sizes(deps.sessions)
    out: dict[tuple[str, str], BurnAlertState] = {}
    for fleet in sorted(set(data.fleet_of.values())):
        for state in evaluate_burn(
            data.of_fleet(fleet), now, policy, agents=max(sizes.get(fleet, 0), 1)
        ):
            out[(f"fleet:{fleet}", state.rule)] = state
    for agent, intervals in data.by_agent.items():
        for state in evaluate_burn(intervals, now, policy, agents=1):
            out[(f"agent:{agent}", state.rule)] = state
    return out


def evaluate_burn_alerts(deps: AlertDeps) -> AlertRun:
    now = deps.clock.now()
    states = current_states(deps, now)
    firing = {k: v for k, v in states.items() if v.firing}
    with deps.sessions() as s:
        open_rows = {
            (r.scope, r.rule): r.alert_id
            for r in s.scalars(select(SlaBurnAlert).where(SlaBurnAlert.open_key.is_not(None)))
        }
    run = AlertRun(firing=len(firing))
    for (scope, rule), state in firing.items():
        if (scope, rule) in open_rows:
            continue
        alert_id = uuid.uuid4().hex
        try:
            with write_session(deps.sessions) as s:
                s.add(
                    SlaBurnAlert(
                        alert_id=alert_id,
                        scope=scope,
                        rule=rule,
                        severity=state.severity,
                        open_key=_key(scope, rule),
                        long_rate=f"{state.long_rate:.4f}",
                        short_rate=f"{state.short_rate:.4f}",
                        fired_at=now,
                        notified={},
                    )
                )
        except IntegrityError:
            continue  # another evaluator fired it first
        run.fired.append((scope, rule))
        _audit(deps, "sla_burn_alert_fired", scope, state, alert_id, now)
        if scope.startswith("fleet:") or deps.policy.error_budget.notify_agent_alerts:
            _notify(deps, alert_id, scope, state)
    for (scope, rule), alert_id in open_rows.items():
        if (scope, rule) in firing:
            continue
        with write_session(deps.sessions) as s:
            s.execute(
                update(SlaBurnAlert)
                .where(SlaBurnAlert.alert_id == alert_id, SlaBurnAlert.open_key.is_not(None))
                .values(open_key=None, resolved_at=now)
                .execution_options(synchronize_session=False)
            )
        run.resolved.append((scope, rule))
        current = states.get((scope, rule))
        if current is not None:
            _audit(deps, "sla_burn_alert_resolved", scope, current, alert_id, now)
    return run


def firing_alerts(
    sessions: sessionmaker[Session], scope_prefix: str | None = None
) -> list[dict[str, Any]]:
    stmt = (
        select(SlaBurnAlert)
        .where(SlaBurnAlert.open_key.is_not(None))
        .order_by(SlaBurnAlert.fired_at)
    )
    if scope_prefix is not None:
        stmt = stmt.where(SlaBurnAlert.scope.startswith(scope_prefix))
    with sessions() as s:
        return [
            {
                "alert_id": r.alert_id,
                "scope": r.scope,
                "rule": r.rule,
                "severity": r.severity,
                "fired_at": r.fired_at.isoformat(),
                "long_rate": r.long_rate,
                "short_rate": r.short_rate,
            }
            for r in s.scalars(stmt)
        ]


def _audit(
    deps: AlertDeps, action: str, scope: str, state: BurnAlertState, alert_id: str, now: datetime
) -> None:
    kind, _, name = scope.partition(":")
    deps.record(
        actor=ACTOR,
        action=action,
        subject=fleet_subject(name) if kind == "fleet" else name,
        fleet=name if kind == "fleet" else None,
        details={
            "alert_id": alert_id,
            "rule": state.rule,
            "severity": state.severity,
            "scope": scope,
            "factor": str(state.factor),
            "long_rate": f"{state.long_rate:.4f}",
            "short_rate": f"{state.short_rate:.4f}",
        },
        time=now,
        event_id=f"{'burn-fire' if action.endswith('fired') else 'burn-ok'}-{alert_id}",
    )


def _notify(deps: AlertDeps, alert_id: str, scope: str, state: BurnAlertState) -> None:
    if deps.gateway is None:
        return
    policy = deps.policy
    priority = policy.error_budget.alert_priority.get(state.severity, "normal")
    subject = f"[{state.severity}] SLA error budget burning {state.rule} ({scope})"
    body = (
        f"The error budget of {scope} is burning at {state.long_rate:.1f}x over "
        f"{state.long_window_s / 3600:g} h and {state.short_rate:.1f}x over "
        f"{state.short_window_s / 60:g} min "
        f"(alert at {state.factor:g}x on both). See `fleet sla status`."
    )
    try:
        out = deps.gateway.run(
            ops.send_message(
                deps.admin_agent_id,
                deps.operator_agent_id,
                "text",
                subject,
                body,
                metadata={"priority": priority},
                auth=Auth.ADMIN,
            )
        )
    except GatewayError as exc:
        log.warning("burn alert %s %s: operator not notified: %s", scope, state.rule, exc)
        return
    with write_session(deps.sessions) as s:
        s.execute(
            update(SlaBurnAlert)
            .where(SlaBurnAlert.alert_id == alert_id)
            .values(notified={"message_id": out.id, "priority": priority})
            .execution_options(synchronize_session=False)
        )
