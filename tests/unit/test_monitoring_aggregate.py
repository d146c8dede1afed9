"""Fleet aggregation: partials merge exactly, and each figure is defined once."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from fleet.monitoring.aggregate import ALL_FLEETS, Partial, merge_partials, percentile
from fleet.monitoring.snapshot import Health, Snapshot


def snap(
    i: int,
    health: Health,
    *,
    p99: float = 500.0,
    err: float = 0.01,
    volume: int = 100,
    compliant: bool | None = True,
    burn: str = "1.25",
) -> Snapshot:
    return Snapshot(
        agent_id=f"a-{i:04d}-00000000",
        polled_at=0.0,
        health=health,
        latency_p99=p99,
        error_rate=err,
        tool_call_volume=volume,
        sla_compliant=compliant,
        burn_rate_per_hour=Decimal(burn),
    )


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.99) is None
    assert percentile([5.0], 0.99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.5) == 50.0
    assert percentile(values[::-1], 1.0) == 100.0


def test_fleet_figures() -> None:
    p = Partial()
    for i in range(6):
        p.add(snap(i, Health.HEALTHY, p99=100.0 * (i + 1)))
    p.add(snap(6, Health.DEGRADED, err=0.07, volume=300))
    p.add(snap(7, Health.CRITICAL, err=0.5, volume=0, compliant=False, burn="10.00"))
    p.add(
        Snapshot(
            agent_id="a-0008-00000000",
            polled_at=0.0,
            health=Health.UNKNOWN,
            error="get_balance: timeout",
        )
    )
    h = p.health("demo")
    assert (h.agents, h.healthy, h.degraded, h.critical, h.unknown) == (9, 6, 1, 1, 1)
    # Errors over calls: (6*100*0.01 + 300*0.07) / 900; the agent with no volume weighs nothing.
    assert h.error_rate is not None and abs(h.error_rate - (6 + 21) / 900) < 1e-12
    assert h.sla_compliance == 7 / 8  # the unknown agent is not counted as compliant or not
    assert h.burn_rate_per_hour == Decimal("18.75")
    assert h.latency_p99 == 600.0


def test_partials_merge_to_the_same_as_one_pass() -> None:
    snaps = [
        snap(
            i,
            [Health.HEALTHY, Health.DEGRADED, Health.CRITICAL][i % 3],
            p99=float(i),
            err=i / 1000,
            volume=i,
            compliant=i % 4 != 0,
            burn=f"{i}.01",
        )
        for i in range(1000)
    ]
    whole = Partial()
    for s in snaps:
        whole.add(s)
    parts = []
    for start in range(0, 1000, 128):
        p = Partial()
        for s in snaps[start : start + 128]:
            p.add(s)
        parts.append(
            {"f": orjson.loads(orjson.dumps(p.to_json()))}
        )  # through JSON, as through Redis
    merged, one = merge_partials(parts)["f"].as_dict(), whole.health("f").as_dict()
    assert merged.pop("error_rate") == pytest.approx(
        one.pop("error_rate"), rel=1e-12
    )  # float sums, another order
    assert merged == one
    assert merge_partials(parts)[ALL_FLEETS].agents == 1000


def test_fleets_are_kept_apart_and_totalled() -> None:
    a, b = Partial(), Partial()
    a.add(snap(1, Health.CRITICAL))
    b.add(snap(2, Health.HEALTHY))
    b.add(snap(3, Health.HEALTHY))
    merged = merge_partials([{"alpha": a.to_json()}, {"beta": b.to_json()}])
    assert merged["alpha"].critical == 1 and merged["beta"].healthy == 2
    assert merged[ALL_FLEETS].agents == 3 and merged[ALL_FLEETS].burn_rate_per_hour == Decimal(
        "3.75"
    )


def test_no_agents() -> None:
    h = merge_partials([])[ALL_FLEETS]
    assert (
        h.agents == 0
        and h.latency_p99 is None
        and h.error_rate is None
        and h.sla_compliance is None
    )
    assert h.burn_rate_per_hour == Decimal("0.00")
