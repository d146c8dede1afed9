"""The Prometheus exposition, read from what a sweep left in Redis."""

from __future__ import annotations

from decimal import Decimal

import fakeredis
import orjson

from fleet.monitoring import prom, sweep
from fleet.monitoring.snapshot import Health, Snapshot, write_snapshots


def test_fleet_totals_and_per_agent_gauges() -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    r.hset(
        sweep.HEALTH_KEY,
        mapping={
            "demo": orjson.dumps(
                {
                    "fleet": "demo",
                    "agents": 2,
                    "healthy": 1,
                    "degraded": 0,
                    "critical": 1,
                    "unknown": 0,
                    "latency_p99": 2500.0,
                    "error_rate": 0.04,
                    "sla_compliance": 0.5,
                    "burn_rate_per_hour": "12.50",
                }
            ),
            "*": orjson.dumps({"fleet": "*", "agents": 2}),
        },
    )
    r.hset(
        sweep.HEALTH_META_KEY,
        mapping={"sweep_id": "s1", "finished_at": "1800000000.5", "wall_s": "4.250"},
    )
    r.hset(sweep.STATS_KEY, mapping={"started": 3, "skipped_overlap": 1})
    write_snapshots(
        r,
        [
            Snapshot(
                "seg0-0001-00000001",
                1.0,
                Health.HEALTHY,
                latency_p99=800.0,
                error_rate=0.01,
                balance=Decimal("40.00"),
                sla_compliant=True,
                fleet="demo",
            ),
            Snapshot(
                "seg0-0002-00000002",
                1.0,
                Health.CRITICAL,
                latency_p99=9000.0,
                error_rate=0.3,
                sla_compliant=False,
                fleet="demo",
            ),
        ],
    )
    text = prom.render(r, max_agents=100, open_alerts={"critical": 2}).decode()
    for line in (
        'fleet_agents{fleet="demo",health="critical"} 1.0',
        'fleet_latency_p99_seconds{fleet="demo"} 2.5',
        'fleet_error_ratio{fleet="demo"} 0.04',
        'fleet_sla_compliance_ratio{fleet="demo"} 0.5',
        'fleet_burn_rate_dollars_per_hour{fleet="demo"} 12.5',
        "fleet_sweep_duration_seconds 4.25",
        'fleet_alerts_open{severity="critical"} 2.0',
        'fleet_sweeps_total{outcome="started"} 3.0',
        'fleet_sweeps_total{outcome="skipped_overlap"} 1.0',
        'fleet_agent_health{agent_id="seg0-0002-00000002",fleet="demo",health="critical"} 1.0',
        'fleet_agent_latency_p99_seconds{agent_id="seg0-0001-00000001",fleet="demo"} 0.8',
        'fleet_agent_balance_dollars{agent_id="seg0-0001-00000001",fleet="demo"} 40.0',
        'fleet_agent_sla_compliant{agent_id="seg0-0002-00000002",fleet="demo"} 0.0',
    ):
        assert line in text, line
    assert 'fleet="*"' not in text


def test_per_agent_series_stop_above_the_limit() -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    r.hset(
        sweep.HEALTH_KEY,
        "demo",
        orjson.dumps(
            {
                "fleet": "demo",
                "agents": 3,
                "healthy": 3,
                "degraded": 0,
                "critical": 0,
                "unknown": 0,
                "latency_p99": None,
                "error_rate": None,
                "sla_compliance": None,
                "burn_rate_per_hour": "0.00",
            }
        ),
    )
    write_snapshots(r, [Snapshot(f"a-{i}", 1.0, Health.HEALTHY, fleet="demo") for i in range(3)])
    text = prom.render(r, max_agents=2).decode()
    assert "fleet_agents{" in text and "fleet_agent_health{" not in text


def test_the_wallet_polls_plan_defects_and_overhead_per_fleet() -> None:
    import time

    r = fakeredis.FakeRedis(decode_responses=True)
    r.hset(sweep.STATS_KEY, mapping={"rate_limited": 4, "paced": 1, "refused": 2})
    r.set(
        sweep.PLAN_KEY,
        orjson.dumps({"fits": True, "admin_calls_per_s": 10.0, "calls_per_hour": 50_000.0}),
    )
    minute = sweep.overhead_key(int(time.time() // 60))
    r.hset(minute, mapping={"demo:calls": 120, "demo:charged": "0.3", "ops:calls": 4})
    text = prom.render(r, max_agents=100).decode()
    for line in (
        'fleet_wallet_poll_defects_total{kind="rate_limited"} 4.0',
        'fleet_wallet_poll_defects_total{kind="paced"} 1.0',
        'fleet_wallet_poll_defects_total{kind="refused"} 2.0',
        "fleet_wallet_plan_fits 1.0",
        'fleet_wallet_plan_calls_per_hour{key="admin"} 36000.0',
        'fleet_wallet_plan_calls_per_hour{key="own"} 14000.0',
        'fleet_monitoring_overhead_dollars_per_hour{fleet="demo"} 0.3',
        'fleet_monitoring_overhead_dollars_per_hour{fleet="ops"} 0.0',
        'fleet_monitoring_calls_per_hour{fleet="demo"} 120.0',
    ):
        assert line in text, line
    r.set(sweep.PLAN_KEY, orjson.dumps({"fits": False, "refused": "wallet plan refused: ..."}))
    assert "fleet_wallet_plan_fits 0.0" in prom.render(r, max_agents=100).decode()
