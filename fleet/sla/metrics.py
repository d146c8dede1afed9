"""Prometheus view of SLA enforcement: error budgets, burn rates, alerts, episodes, escalations.

A collector read at scrape time from the database, so every API process
answers the same. Register it once per process on the registry that
/metrics serves::

    from fleet.sla.metrics import register_sla_collector
    register_sla_collector(sessions_provider, policy_provider)   # default REGISTRY

Series (fleet-level always; agent-level for agents with violation time in
the SLO window, the others being at a full budget):

    fleet_sla_error_budget_remaining_ratio{scope,fleet,agent}      1 − consumed/budget
    fleet_sla_error_budget_consumed_seconds{scope,fleet,agent}
    fleet_sla_error_budget_exhaustion_seconds{scope,fleet,agent}   +Inf when nothing burns
    fleet_sla_burn_rate{scope,fleet,agent,window}                  each alert window
    fleet_sla_burn_alert_firing{scope,rule,severity}               1 per firing alert
    fleet_sla_open_episodes{fleet}
    fleet_sla_escalations{tier,status}                             actions recorded, by state
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy
from fleet.clock import Clock, SystemClock
from fleet.sla.alerts import firing_alerts
from fleet.sla.budget import (
    Interval,
    burn_rate,
    compute_budget,
    duration_label,
    fleet_sizes,
    load_intervals,
    max_window_s,
)
from fleet.sla.models import EpisodeState, SlaEpisode, SlaEscalation

log = logging.getLogger(__name__)

_LABELS = ["scope", "fleet", "agent"]


class SlaCollector:
    def __init__(
        self,
        sessions: Callable[[], sessionmaker[Session]],
        policy: Callable[[], Policy],
        clock: Clock | None = None,
    ) -> None:
        self._sessions, self._policy, self._clock = sessions, policy, clock or SystemClock()

    def describe(self) -> list[Metric]:
        return []  # no scrape at registration time

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._collect()
        except Exception:  # noqa: BLE001 - a broken database must not break /metrics for everyone else
            log.exception("SLA metrics unavailable")

    def _collect(self) -> Iterator[Metric]:
        sessions, policy, now = self._sessions(), self._policy().error_budget, self._clock.now()
        remaining = GaugeMetricFamily(
            "fleet_sla_error_budget_remaining_ratio",
            "Error budget left in the SLO window (1 - consumed/allowed).",
            labels=_LABELS,
        )
        consumed = GaugeMetricFamily(
            "fleet_sla_error_budget_consumed_seconds",
            "Violation time inside the SLO window (agent-seconds for a fleet).",
            labels=_LABELS,
        )
        exhaustion = GaugeMetricFamily(
            "fleet_sla_error_budget_exhaustion_seconds",
            "Time until the budget is spent at the recent burn rate (+Inf: not burning).",
            labels=_LABELS,
        )
        burn = GaugeMetricFamily(
            "fleet_sla_burn_rate",
            "Burn rate over a window (1 = spends the budget exactly).",
            labels=[*_LABELS, "window"],
        )
        windows = sorted(
            {w for a in policy.burn_alerts for w in (a.long_window_s, a.short_window_s)}
        )
        data = load_intervals(sessions, now - timedelta(seconds=max_window_s(policy)))
        sizes = fleet_sizes(sessions)

        def add(scope: str, fleet: str, agent: str, intervals: list[Interval], agents: int) -> None:
            b = compute_budget(intervals, now, policy, agents=agents)
            labels = [scope, fleet, agent]
            remaining.add_metric(labels, b.remaining)
            consumed.add_metric(labels, b.consumed_s)
            exhaustion.add_metric(
                labels, math.inf if b.time_to_exhaustion_s is None else b.time_to_exhaustion_s
            )
            for w in windows:
                burn.add_metric(
                    [*labels, duration_label(w)],
                    burn_rate(intervals, now, w, policy.allowed_fraction, agents),
                )

        for fleet in sorted(set(sizes) | set(data.fleet_of.values())):
            add("fleet", fleet, "", data.of_fleet(fleet), max(sizes.get(fleet, 0), 1))
        for agent, intervals in sorted(data.by_agent.items()):
            add("agent", data.fleet_of.get(agent, ""), agent, intervals, 1)
        yield from (remaining, consumed, exhaustion, burn)

        alerts = GaugeMetricFamily(
            "fleet_sla_burn_alert_firing",
            "Multi-window burn-rate alerts now firing.",
            labels=["scope", "rule", "severity"],
        )
        for a in firing_alerts(sessions):
            alerts.add_metric([a["scope"], a["rule"], a["severity"]], 1)
        yield alerts

        with sessions() as s:
            open_by_fleet = s.execute(
                select(SlaEpisode.fleet, func.count())
                .where(SlaEpisode.state == EpisodeState.OPEN)
                .group_by(SlaEpisode.fleet)
            ).all()
            by_tier = s.execute(
                select(SlaEscalation.tier, SlaEscalation.status, func.count()).group_by(
                    SlaEscalation.tier, SlaEscalation.status
                )
            ).all()
        episodes = GaugeMetricFamily(
            "fleet_sla_open_episodes", "Open SLA violation episodes.", labels=["fleet"]
        )
        for fleet, n in open_by_fleet:
            episodes.add_metric([fleet], n)
        yield episodes
        escalations = GaugeMetricFamily(
            "fleet_sla_escalations",
            "Escalation actions recorded, by tier and state (tier 0: recovery notice).",
            labels=["tier", "status"],
        )
        for tier, status, n in by_tier:
            escalations.add_metric([str(tier), status], n)
        yield escalations


_registered: dict[int, SlaCollector] = {}
_lock = threading.Lock()


def register_sla_collector(
    sessions: Callable[[], sessionmaker[Session]],
    policy: Callable[[], Policy],
    registry: CollectorRegistry = REGISTRY,
    clock: Clock | None = None,
) -> SlaCollector:
    """Register the collector on ``registry`` once (later calls return the first one)."""
    with _lock:
        existing = _registered.get(id(registry))
        if existing is not None:
            return existing
        collector = SlaCollector(sessions, policy, clock)
        registry.register(collector)
        _registered[id(registry)] = collector
        return collector
