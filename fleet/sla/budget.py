"""Error budgets and burn rates, from violation episodes.

An agent's SLO allows it to be in violation ``allowed_fraction`` of the SLO
window (0.5 % of 30 days = 216 minutes; ``slo_window_days: 30.44``, an average
calendar month, gives the playbook's 219). A fleet's budget is the sum of its
agents' (agent-minutes), so its burn rate is the share of agent-time in
violation over the allowed share.

* consumed: violation time inside the window (episodes clipped to it; an open
  episode counts up to now, or up to its first compliant sample while recovering)
* burn rate over a window W: violation time in W / (W × agents × allowed_fraction);
  1.0 spends exactly the budget over a whole SLO window
* remaining = 1 − consumed / budget (the period's burn rate); below 0 when overspent
* time to exhaustion: what remains, at the burn of the last
  ``exhaustion_rate_window_s``; None when nothing burns
* burn-rate alerts (the SRE workbook's multi-window, multi-burn-rate rules):
  an alert fires when the burn rate over BOTH its long and its short window
  is at or over its factor (14.4× 1 h & 5 min, 6× 6 h & 30 min page;
  3× 1 d & 2 h, 1× 3 d & 6 h open a ticket). The short window makes an alert
  stop soon after the burning stops.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from config.policy import BurnRateAlert, ErrorBudgetPolicy
from fleet.sla.models import SlaEpisode
from fleet.storage.records import Agent, AgentStatus

Interval = tuple[datetime, datetime | None]  # (start, end or None while it goes on)
DAY_S = 86400.0
IN_BUDGET = (AgentStatus.ACTIVE, AgentStatus.PAUSED)


def overlap_s(intervals: Iterable[Interval], start: datetime, end: datetime) -> float:
    total = 0.0
    for began, ended in intervals:
        lo, hi = max(began, start), min(ended or end, end)
        if hi > lo:
            total += (hi - lo).total_seconds()
    return total


def burn_rate(
    intervals: Sequence[Interval],
    now: datetime,
    window_s: float,
    allowed_fraction: float,
    agents: int = 1,
) -> float:
    if agents <= 0:
        return 0.0
    spent = overlap_s(intervals, now - timedelta(seconds=window_s), now)
    return spent / (window_s * agents * allowed_fraction)


@dataclass(frozen=True)
class Budget:
    scope: str
    agents: int
    window_days: float
    allowed_s: float
    consumed_s: float
    remaining: float  # 1 - consumed/allowed
    burn_rate: float  # over the whole SLO window (= consumed/allowed)
    recent_burn_rate: float  # over exhaustion_rate_window_s
    time_to_exhaustion_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "agents": self.agents,
            "window_days": self.window_days,
            "allowed_minutes": round(self.allowed_s / 60, 2),
            "consumed_minutes": round(self.consumed_s / 60, 2),
            "remaining": round(self.remaining, 6),
            "remaining_pct": round(self.remaining * 100, 2),
            "burn_rate": round(self.burn_rate, 6),
            "recent_burn_rate": round(self.recent_burn_rate, 4),
            "time_to_exhaustion_s": None
            if self.time_to_exhaustion_s is None
            else round(self.time_to_exhaustion_s),
        }


def compute_budget(
    intervals: Sequence[Interval],
    now: datetime,
    policy: ErrorBudgetPolicy,
    *,
    agents: int = 1,
    scope: str = "",
) -> Budget:
    window_s = policy.slo_window_days * DAY_S
    allowed_s = window_s * policy.allowed_fraction * max(agents, 0)
    consumed = overlap_s(intervals, now - timedelta(seconds=window_s), now)
    period_rate = consumed / allowed_s if allowed_s else 0.0
    recent_window = policy.exhaustion_rate_window_s
    recent_spent = overlap_s(intervals, now - timedelta(seconds=recent_window), now)
    recent_rate = (
        recent_spent / (recent_window * agents * policy.allowed_fraction) if agents else 0.0
    )
    left = allowed_s - consumed
    if left <= 0:
        tte: float | None = 0.0
    elif recent_spent <= 0:
        tte = None
    else:
        tte = left / (
            recent_spent / recent_window
        )  # agent-seconds left / agent-seconds burnt per second
    return Budget(
        scope,
        agents,
        policy.slo_window_days,
        allowed_s,
        consumed,
        1.0 - period_rate,
        period_rate,
        recent_rate,
        tte,
    )


def duration_label(seconds: float) -> str:
    for unit, size in (("d", DAY_S), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def rule_name(alert: BurnRateAlert) -> str:
    long, short = duration_label(alert.long_window_s), duration_label(alert.short_window_s)
    return f"{alert.factor:g}x-{long}-{short}"


@dataclass(frozen=True)
class BurnAlertState:
    rule: str
    severity: str
    factor: float
    long_window_s: float
    short_window_s: float
    long_rate: float
    short_rate: float

    @property
    def firing(self) -> bool:
        return self.long_rate >= self.factor and self.short_rate >= self.factor

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "factor": self.factor,
            "firing": self.firing,
            "long_window_s": self.long_window_s,
            "short_window_s": self.short_window_s,
            "long_rate": round(self.long_rate, 3),
            "short_rate": round(self.short_rate, 3),
        }


def evaluate_burn(
    intervals: Sequence[Interval], now: datetime, policy: ErrorBudgetPolicy, *, agents: int = 1
) -> list[BurnAlertState]:
    return [
        BurnAlertState(
            rule_name(a),
            a.severity,
            a.factor,
            a.long_window_s,
            a.short_window_s,
            burn_rate(intervals, now, a.long_window_s, policy.allowed_fraction, agents),
            burn_rate(intervals, now, a.short_window_s, policy.allowed_fraction, agents),
        )
        for a in policy.burn_alerts
    ]


# ------------------------------------------------------------------------------ from the database


@dataclass(frozen=True)
class FleetIntervals:
    by_agent: dict[str, list[Interval]]
    fleet_of: dict[str, str]

    def of_fleet(self, fleet: str) -> list[Interval]:
        return [
            i
            for agent, ivs in self.by_agent.items()
            if self.fleet_of.get(agent) == fleet
            for i in ivs
        ]


def load_intervals(
    sessions: sessionmaker[Session],
    since: datetime,
    *,
    agent_id: str | None = None,
    fleet: str | None = None,
) -> FleetIntervals:
    """Every episode that overlaps [since, now], as violation intervals."""
    stmt = select(
        SlaEpisode.agent_id,
        SlaEpisode.fleet,
        SlaEpisode.opened_at,
        SlaEpisode.closed_at,
        SlaEpisode.recovering_since,
    ).where(or_(SlaEpisode.closed_at.is_(None), SlaEpisode.closed_at >= since))
    if agent_id is not None:
        stmt = stmt.where(SlaEpisode.agent_id == agent_id)
    if fleet is not None:
        stmt = stmt.where(SlaEpisode.fleet == fleet)
    by_agent: dict[str, list[Interval]] = {}
    fleet_of: dict[str, str] = {}
    with sessions() as s:
        for agent, fleet_name, opened, closed, recovering in s.execute(stmt):
            by_agent.setdefault(agent, []).append(
                (opened, closed if closed is not None else recovering)
            )
            fleet_of[agent] = fleet_name
    return FleetIntervals(by_agent, fleet_of)


def fleet_sizes(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Agents that count towards each fleet's budget (active or paused)."""
    with sessions() as s:
        rows = s.execute(
            select(Agent.fleet, func.count())
            .where(Agent.status.in_(IN_BUDGET))
            .group_by(Agent.fleet)
        )
        return {str(f): int(n) for f, n in rows}


def max_window_s(policy: ErrorBudgetPolicy) -> float:
    return max(
        [
            policy.slo_window_days * DAY_S,
            policy.exhaustion_rate_window_s,
            *(a.long_window_s for a in policy.burn_alerts),
        ]
    )


def agent_budget(
    sessions: sessionmaker[Session], policy: ErrorBudgetPolicy, agent_id: str, now: datetime
) -> Budget:
    data = load_intervals(
        sessions, now - timedelta(seconds=max_window_s(policy)), agent_id=agent_id
    )
    return compute_budget(
        data.by_agent.get(agent_id, []), now, policy, agents=1, scope=f"agent:{agent_id}"
    )


def fleet_budgets(
    sessions: sessionmaker[Session],
    policy: ErrorBudgetPolicy,
    now: datetime,
    fleet: str | None = None,
) -> dict[str, Budget]:
    sizes = fleet_sizes(sessions)
    data = load_intervals(sessions, now - timedelta(seconds=max_window_s(policy)), fleet=fleet)
    names = [fleet] if fleet is not None else sorted(set(sizes) | set(data.fleet_of.values()))
    return {
        name: compute_budget(
            data.of_fleet(name), now, policy, agents=sizes.get(name, 0), scope=f"fleet:{name}"
        )
        for name in names
    }
