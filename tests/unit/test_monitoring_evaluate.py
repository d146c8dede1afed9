"""The per-agent evaluation the heartbeat ingest and the wallet poll share."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from config.settings import load_settings
from fleet.gateway.schemas import BalanceResult, BudgetStatus, MetricPoint, MetricSeries
from fleet.monitoring.evaluate import fold_hour, judge_snapshot, to_snapshot, with_sla
from fleet.monitoring.poller import Reading
from fleet.monitoring.rules import AgentRules
from fleet.monitoring.snapshot import Health, Snapshot

POLICY = load_settings().policy
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
TERMS = POLICY.sla_templates["standard-support"].model_dump(mode="json")


def reading(p99: float, err: float, failed: bool = False) -> Reading:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return Reading(
        "a-1",
        BalanceResult(balance=Decimal("10.00")),
        BudgetStatus(daily_spend=Decimal("24"), monthly_spend=Decimal("0")),
        None if failed else MetricSeries(data=[MetricPoint(value=p99, timestamp=at)]),
        None if failed else MetricSeries(data=[MetricPoint(value=err, timestamp=at)]),
        ("timeout",) if failed else (),
    )


def test_a_reading_becomes_a_classified_snapshot_with_its_sla_compliance() -> None:
    snap = to_snapshot(reading(2500.0, 0.01), "demo", T0, "s1", POLICY, TERMS)
    assert snap.health is Health.HEALTHY and snap.burn_rate_per_hour == Decimal("1.0000")
    assert snap.sla_compliant is False and snap.breached_terms == ("p99_latency_ms",)
    failed = to_snapshot(reading(0, 0, failed=True), "demo", T0, "s1", POLICY, TERMS)
    assert failed.health is Health.UNKNOWN and failed.error == "timeout"
    assert failed.sla_compliant is None


def test_sla_compliance_needs_a_measured_term() -> None:
    bare = Snapshot("a-1", T0, Health.UNKNOWN)
    assert with_sla(bare, TERMS) is bare
    assert with_sla(Snapshot("a-1", T0, Health.HEALTHY, latency_p99=100.0), TERMS).sla_compliant


def test_an_hour_is_folded_sample_by_sample_and_handed_back_when_it_turns() -> None:
    state: dict[str, object] = {}
    for minute, p99 in enumerate((1000.0, 3000.0)):
        snap = Snapshot("a-1", T0, Health.HEALTHY, latency_p99=p99, fleet="demo")
        assert fold_hour(state, snap, T0 + 60 * minute) is None
    row = fold_hour(state, Snapshot("a-1", T0, Health.CRITICAL, fleet="demo"), T0 + 3600)
    assert row is not None
    assert row["samples"] == 2 and row["latency_p99_avg"] == 2000.0
    assert row["latency_p99_max"] == 3000.0 and row["critical"] == 0


def test_a_breach_held_long_enough_fires_once() -> None:
    rules, state = AgentRules.from_policy(POLICY.alerts), {}  # type: ignore[var-annotated]
    fired = []
    for minute in range(3):
        snap = with_sla(
            Snapshot("a-1", T0, Health.HEALTHY, latency_p99=2500.0, fleet="demo"), TERMS
        )
        changes, _ = judge_snapshot(rules, state, snap, T0 + 60 * minute)
        fired += [c.rule.name for c in changes if c.fired]
    assert fired == ["agent.sla_breach"]
