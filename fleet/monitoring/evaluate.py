"""What the monitoring makes of one agent's fresh snapshot, whoever produced it.

Moved out of the sweep when the measurements came to arrive by heartbeat:

- :func:`with_sla`: a snapshot → the same with its SLA compliance;
- :func:`judge_snapshot`: a snapshot → the agent's alert rule changes and, when
  the hour turns, the finished hour's rollup row (both fold into the agent's rule
  state, a small JSON dict kept in Redis by the caller);
- :func:`apply_judgements`: alerts first (recorded idempotently, so a redelivered
  message re-sends nothing), then the rollups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy
from fleet.clock import utc_from_timestamp
from fleet.monitoring import alerts as alerts_mod
from fleet.monitoring.models import AgentHourly
from fleet.monitoring.rules import AgentRules, AgentSample, Change, evaluate_agent
from fleet.monitoring.snapshot import Health, Snapshot
from fleet.sla.compliance import local_breaches, margin_pct
from fleet.sla.contracts import active_contracts, contract_for
from fleet.storage.db import write_connection
from fleet.storage.records import Agent

HOUR = 3600


def with_sla(snap: Snapshot, terms: Mapping[str, Any] | None) -> Snapshot:
    """``snap`` with its SLA compliance, when it measures at least one of ``terms``."""
    if not terms:
        return snap
    broken, margin = local_breaches(terms, snap), margin_pct(terms, snap)
    if not broken and margin is None:
        return snap
    return replace(snap, sla_compliant=not broken, sla_margin_pct=margin, breached_terms=broken)


def sla_terms(
    sessions: sessionmaker[Session], policy: Policy, agent_ids: Sequence[str]
) -> dict[str, Mapping[str, Any]]:
    """Each agent's SLA terms: its recorded contract, else its template's."""
    with sessions() as s:
        rows = s.execute(
            select(Agent.agent_id, Agent.sla_template).where(Agent.agent_id.in_(agent_ids))
        )
        templates = {agent_id: template for agent_id, template in rows}
        contracts = active_contracts(s, agent_ids)
    return {
        agent_id: contract_for(policy, template, contracts.get(agent_id)).terms
        for agent_id, template in templates.items()
    }


def judge_snapshot(
    rules: AgentRules, state: dict[str, Any], snap: Snapshot, now: float
) -> tuple[list[Change], dict[str, Any] | None]:
    """The agent's rule changes on ``snap`` and the finished hour's row, if the hour
    turned; ``state`` (the agent's rule state) is updated in place."""
    changes = evaluate_agent(
        rules,
        state,
        AgentSample(
            snap.agent_id,
            now,
            snap.fleet,
            snap.latency_p99,
            snap.error_rate,
            snap.balance,
            snap.burn_rate_per_hour,
            snap.sla_compliant,
        ),
    )
    return changes, fold_hour(state, snap, now)


def apply_judgements(
    sessions: sessionmaker[Session],
    changes: list[Change],
    rollups: list[dict[str, Any]],
    handoff: alerts_mod.Handoff,
    now: float,
) -> None:
    """Alerts first (idempotent: a redelivered batch re-sends nothing), then the rollups."""
    if changes:
        alerts_mod.apply_changes(sessions, changes, handoff, now)
    if rollups:
        insert_rollups(sessions, rollups)


def fold_hour(state: dict[str, Any], snap: Snapshot, now: float) -> dict[str, Any] | None:
    """Fold a sample into the agent's current hour (state["h"]); return the previous
    hour's row when the hour turns."""
    hour = int(now // HOUR) * HOUR
    acc = state.get("h")
    row = None
    if acc is not None and acc["t"] != hour:
        row = hour_row(snap.agent_id, snap.fleet, acc)
        acc = None
    if acc is None:
        acc = state["h"] = {
            "t": hour,
            "n": 0,
            "u": 0,
            "c": 0,
            "d": 0,
            "ps": 0.0,
            "pn": 0,
            "pm": None,
            "es": 0.0,
            "en": 0,
            "bm": None,
            "bs": "0",
            "bn": 0,
            "so": 0,
            "sn": 0,
        }
    acc["n"] += 1
    if snap.health is Health.UNKNOWN:
        acc["u"] += 1
    elif snap.health is Health.CRITICAL:
        acc["c"] += 1
    elif snap.health is Health.DEGRADED:
        acc["d"] += 1
    if snap.latency_p99 is not None:
        acc["ps"] += snap.latency_p99
        acc["pn"] += 1
        acc["pm"] = snap.latency_p99 if acc["pm"] is None else max(acc["pm"], snap.latency_p99)
    if snap.error_rate is not None:
        acc["es"] += snap.error_rate
        acc["en"] += 1
    if snap.balance is not None:
        acc["bm"] = str(
            snap.balance if acc["bm"] is None else min(Decimal(acc["bm"]), snap.balance)
        )
    if snap.burn_rate_per_hour is not None:
        acc["bs"] = str(Decimal(acc["bs"]) + snap.burn_rate_per_hour)
        acc["bn"] += 1
    if snap.sla_compliant is not None:
        acc["sn"] += 1
        acc["so"] += snap.sla_compliant
    return row


def hour_row(agent_id: str, fleet: str | None, acc: dict[str, Any]) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "hour": utc_from_timestamp(acc["t"]),
        "fleet": fleet,
        "samples": acc["n"],
        "unknown": acc["u"],
        "critical": acc["c"],
        "degraded": acc["d"],
        "latency_p99_avg": acc["ps"] / acc["pn"] if acc["pn"] else None,
        "latency_p99_max": acc["pm"],
        "error_rate_avg": acc["es"] / acc["en"] if acc["en"] else None,
        "balance_min": acc["bm"],
        "burn_rate_avg": str((Decimal(acc["bs"]) / acc["bn"]).quantize(Decimal("0.01")))
        if acc["bn"]
        else None,
        "sla_compliant": acc["so"],
        "sla_checked": acc["sn"],
    }


def insert_rollups(sessions: sessionmaker[Session], rows: list[dict[str, Any]]) -> None:
    """Insert finished hours; a row already there (a redelivered batch) is left as it is."""
    with write_connection(sessions) as conn:
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            conn.execute(pg_insert(AgentHourly).on_conflict_do_nothing(), rows)
        elif conn.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            conn.execute(sqlite_insert(AgentHourly).on_conflict_do_nothing(), rows)
        else:  # pragma: no cover - the two databases we support
            existing = set(conn.execute(select(AgentHourly.agent_id, AgentHourly.hour)).all())
            conn.execute(
                insert(AgentHourly),
                [r for r in rows if (r["agent_id"], r["hour"]) not in existing],
            )


__all__ = [
    "apply_judgements",
    "fold_hour",
    "hour_row",
    "insert_rollups",
    "judge_snapshot",
    "sla_terms",
    "with_sla",
]
