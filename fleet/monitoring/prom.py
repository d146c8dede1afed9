"""Prometheus exposition of the fleet's health, read from Redis at scrape time.

Fleet totals come from the last finished sweep; per-agent gauges from the
snapshots (up to ``metrics.prometheus_max_agents`` agents: past that a scrape
would cost more than it tells, and the fleet totals remain). Names follow the
Prometheus conventions: a ``fleet_`` namespace, base units (seconds, ratios,
dollars) in the name, ``_total`` only on counters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleet.hotstate import KEY_PREFIX
from fleet.monitoring.aggregate import ALL_FLEETS
from fleet.monitoring.snapshot import Health
from fleet.monitoring.sweep import STATS_KEY, fleet_health, last_plan, monitoring_overhead

_AGENT_FIELDS = (
    "fleet",
    "health",
    "latency_p50",
    "latency_p99",
    "error_rate",
    "tool_call_volume",
    "reputation",
    "balance",
    "burn_rate_per_hour",
    "sla_compliant",
    "polled_at",
)


class FleetCollector(Collector):
    def __init__(
        self, r: redis.Redis, *, max_agents: int, open_alerts: dict[str, int] | None = None
    ) -> None:
        self._r = r
        self._max_agents = max_agents
        self._open_alerts = open_alerts or {}

    def collect(self) -> Iterator[Metric]:
        fleets, meta = fleet_health(self._r)
        yield from self._fleet(fleets, meta)
        alerts = GaugeMetricFamily(
            "fleet_alerts_open", "Alerts open now, by severity.", labels=["severity"]
        )
        for severity in ("info", "warning", "critical", "emergency"):
            alerts.add_metric([severity], self._open_alerts.get(severity, 0))
        yield alerts
        stats = self._r.hgetall(STATS_KEY)
        sweeps = CounterMetricFamily(
            "fleet_sweeps",
            "Sweeps started, and ticks skipped (duplicate tick, previous sweep still running).",
            labels=["outcome"],
        )
        for outcome in ("started", "skipped_duplicate", "skipped_overlap"):
            sweeps.add_metric([outcome], float(stats.get(outcome, 0)))
        yield sweeps
        yield from self._heartbeats()
        yield from self._wallet_poll(stats)
        total = sum(int(v["agents"]) for k, v in fleets.items() if k != ALL_FLEETS)
        if 0 < total <= self._max_agents:
            yield from self._agents()

    def _heartbeats(self) -> Iterator[Metric]:
        from fleet.monitoring.ingest import ingest_counts
        from fleet.monitoring.stream_consumer import stream_status

        counts = ingest_counts(self._r)
        events = CounterMetricFamily(
            "fleet_heartbeat_events",
            "Heartbeat events from the gateway's stream, by what the ingest made of them.",
            labels=["outcome"],
        )
        for outcome in ("accepted", "duplicate", "superseded", "ignored"):
            events.add_metric([outcome], float(counts[outcome]))
        for reason, n in counts["rejected"].items():
            events.add_metric([f"rejected_{reason}"], float(n))
        yield events
        cursor = GaugeMetricFamily(
            "fleet_stream_cursor", "The last event id the stream consumer handed on."
        )
        cursor.add_metric([], float(stream_status(self._r).get("cursor") or 0))
        yield cursor

    def _wallet_poll(self, stats: Mapping[Any, Any]) -> Iterator[Metric]:
        """The wallet poll: its plan, its defects, and what monitoring costs per fleet."""
        defects = CounterMetricFamily(
            "fleet_wallet_poll_defects",
            "Wallet reads answered 429 (rate_limited) or held back by the client (paced), "
            "and sweeps refused because the plan could not fit (refused).",
            labels=["kind"],
        )
        for kind in ("rate_limited", "paced", "refused"):
            defects.add_metric([kind], float(stats.get(kind, 0)))
        yield defects
        plan = last_plan(self._r)
        if plan is not None:
            fits = GaugeMetricFamily(
                "fleet_wallet_plan_fits", "1 if the last wallet plan fitted the rate windows."
            )
            fits.add_metric([], 1.0 if plan["fits"] else 0.0)
            yield fits
            if plan["fits"]:
                rate = GaugeMetricFamily(
                    "fleet_wallet_plan_calls_per_hour",
                    "Wallet reads an hour the plan makes, by key.",
                    labels=["key"],
                )
                rate.add_metric(["admin"], plan["admin_calls_per_s"] * 3600)
                rate.add_metric(["own"], plan["calls_per_hour"] - plan["admin_calls_per_s"] * 3600)
                yield rate
        overhead = monitoring_overhead(self._r, time.time())
        cost = GaugeMetricFamily(
            "fleet_monitoring_overhead_dollars_per_hour",
            "What the gateway charged (X-Charged) for the wallet poll's calls in the last hour.",
            labels=["fleet"],
        )
        calls = GaugeMetricFamily(
            "fleet_monitoring_calls_per_hour",
            "The wallet poll's calls in the last hour.",
            labels=["fleet"],
        )
        for fleet, o in overhead.items():
            cost.add_metric([fleet], float(o.charged))
            calls.add_metric([fleet], float(o.calls))
        yield from (cost, calls)

    def _fleet(self, fleets: dict[str, dict[str, Any]], meta: dict[str, str]) -> Iterator[Metric]:
        agents = GaugeMetricFamily(
            "fleet_agents", "Agents by health class at the last sweep.", labels=["fleet", "health"]
        )
        p99 = GaugeMetricFamily(
            "fleet_latency_p99_seconds",
            "99th percentile of the agents' p99 latency.",
            labels=["fleet"],
        )
        errors = GaugeMetricFamily(
            "fleet_error_ratio", "Errors over tool calls, across the fleet.", labels=["fleet"]
        )
        sla = GaugeMetricFamily(
            "fleet_sla_compliance_ratio",
            "Agents compliant with their SLA over agents checked.",
            labels=["fleet"],
        )
        burn = GaugeMetricFamily(
            "fleet_burn_rate_dollars_per_hour", "Sum of the agents' burn rates.", labels=["fleet"]
        )
        for name, h in fleets.items():
            if name == ALL_FLEETS:
                continue
            for health in Health:
                agents.add_metric([name, health.value], h[health.value])
            if h["latency_p99"] is not None:
                p99.add_metric([name], h["latency_p99"] / 1000.0)
            if h["error_rate"] is not None:
                errors.add_metric([name], h["error_rate"])
            if h["sla_compliance"] is not None:
                sla.add_metric([name], h["sla_compliance"])
            burn.add_metric([name], float(h["burn_rate_per_hour"]))
        yield from (agents, p99, errors, sla, burn)
        if meta.get("finished_at"):
            last = GaugeMetricFamily(
                "fleet_sweep_last_finished_timestamp_seconds",
                "When the last sweep finished (Unix time).",
            )
            last.add_metric([], float(meta["finished_at"]))
            yield last
        if meta.get("wall_s"):
            wall = GaugeMetricFamily(
                "fleet_sweep_duration_seconds",
                "Tick to last snapshot and fleet view stored, last sweep.",
            )
            wall.add_metric([], float(meta["wall_s"]))
            yield wall

    def _agents(self) -> Iterator[Metric]:
        labels = ["agent_id", "fleet"]
        fams = {
            "health": GaugeMetricFamily(
                "fleet_agent_health",
                "1 for the agent's health class at the last sweep.",
                labels=[*labels, "health"],
            ),
            "latency_p50": GaugeMetricFamily(
                "fleet_agent_latency_p50_seconds", "Agent p50 latency.", labels=labels
            ),
            "latency_p99": GaugeMetricFamily(
                "fleet_agent_latency_p99_seconds", "Agent p99 latency.", labels=labels
            ),
            "error_rate": GaugeMetricFamily(
                "fleet_agent_error_ratio", "Agent error rate.", labels=labels
            ),
            "tool_call_volume": GaugeMetricFamily(
                "fleet_agent_tool_calls", "Agent tool calls in the analytics window.", labels=labels
            ),
            "reputation": GaugeMetricFamily(
                "fleet_agent_reputation_score", "Agent reputation (0..1).", labels=labels
            ),
            "balance": GaugeMetricFamily(
                "fleet_agent_balance_dollars", "Agent wallet balance.", labels=labels
            ),
            "burn_rate_per_hour": GaugeMetricFamily(
                "fleet_agent_burn_rate_dollars_per_hour", "Agent burn rate.", labels=labels
            ),
            "sla_compliant": GaugeMetricFamily(
                "fleet_agent_sla_compliant",
                "1 if the agent met its SLA at the last check.",
                labels=labels,
            ),
            "polled_at": GaugeMetricFamily(
                "fleet_agent_last_poll_timestamp_seconds",
                "When the agent was last polled (Unix time).",
                labels=labels,
            ),
        }
        keys = sorted(self._r.scan_iter(match=f"{KEY_PREFIX}snapshot:*", count=1000))
        for start in range(0, len(keys), 1000):
            pipe = self._r.pipeline(transaction=False)
            for key in keys[start : start + 1000]:
                pipe.hmget(key, _AGENT_FIELDS)
            for key, values in zip(keys[start : start + 1000], pipe.execute(), strict=True):
                raw = dict(zip(_AGENT_FIELDS, values, strict=True))
                agent_id = key[len(KEY_PREFIX) + len("snapshot:") :]
                lv = [agent_id, raw["fleet"] or ""]
                if raw["health"]:
                    fams["health"].add_metric([*lv, raw["health"]], 1)
                for name in ("latency_p50", "latency_p99"):
                    if raw[name]:
                        fams[name].add_metric(lv, float(raw[name]) / 1000.0)
                for name in (
                    "error_rate",
                    "tool_call_volume",
                    "reputation",
                    "balance",
                    "burn_rate_per_hour",
                    "polled_at",
                ):
                    if raw[name]:
                        fams[name].add_metric(lv, float(raw[name]))
                if raw["sla_compliant"]:
                    fams["sla_compliant"].add_metric(
                        lv, 1.0 if raw["sla_compliant"] == "1" else 0.0
                    )
        yield from fams.values()


def render(r: redis.Redis, *, max_agents: int, open_alerts: dict[str, int] | None = None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(r, max_agents=max_agents, open_alerts=open_alerts))
    return generate_latest(registry)


__all__ = ["FleetCollector", "render"]
