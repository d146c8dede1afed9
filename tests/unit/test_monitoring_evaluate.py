"""The per-agent evaluation the heartbeat ingest and the wallet poll share."""

from __future__ import annotations

from datetime import UTC, datetime

from config.settings import load_settings
from fleet.monitoring.evaluate import fold_hour, judge_snapshot, with_sla
from fleet.monitoring.rules import AgentRules
from fleet.monitoring.snapshot import Health, Snapshot

POLICY = load_settings().policy
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
TERMS = POLICY.sla_templates["standard-support"].model_dump(mode="json")


def test_a_snapshot_over_a_term_is_judged_in_breach_with_its_margin() -> None:
    snap = with_sla(Snapshot("a-1", T0, Health.HEALTHY, latency_p99=2500.0, error_rate=0.01), TERMS)
    assert snap.sla_compliant is False and snap.breached_terms == ("p99_latency_ms",)
    assert snap.sla_margin_pct is not None


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
