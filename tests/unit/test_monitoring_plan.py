"""The wallet poll's plan: keys, windows, period and headroom in, routes or a refusal out."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from fleet.monitoring.plan import NO_KEY, PlanInput, PlanRefused, make_plan, routes, slot_of

WINDOWS = {"free": 100, "starter": 1_000, "pro": 10_000, "enterprise": 100_000}


def given(**changes: object) -> PlanInput:
    base = PlanInput(
        agents_by_tier={"pro": 10_000},
        windows=WINDOWS,
        period_s=60,
        tick_s=60,
        reads_per_agent=2,
        headroom=0.5,
        heartbeat_interval_s=60,
        admin=False,
        admin_calls_per_s=0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_ten_thousand_pro_agents_fit_their_own_windows_every_minute() -> None:
    plan = make_plan(given())
    assert plan.own_by_tier == {"pro": 10_000}
    assert plan.admin_by_tier == {}
    assert plan.read_interval_s == 60
    assert plan.own_calls_per_hour == 120
    # (10,000 - 1) × 0.5 - 60 heartbeats an hour
    assert plan.own_budget_per_hour["pro"] == pytest.approx(4939.5)
    assert plan.calls_per_hour == 1_200_000


def test_free_windows_are_eaten_by_the_heartbeats_and_the_refusal_names_the_numbers() -> None:
    with pytest.raises(PlanRefused) as refused:
        make_plan(given(agents_by_tier={"free": 50, "pro": 10}))
    exc = refused.value
    assert exc.unplaced == {"free": 50}
    # 99 × 0.5 = 49.5 usable, 60 of them heartbeats: no room whatever the period.
    assert exc.min_period_s is None
    assert "50 agents fit neither" in exc.message
    assert "free 50 agents (window 100/h leaves 0/h)" in exc.message
    assert "240 calls/h" not in exc.message and "120 calls/h per agent" in exc.message
    assert "no admin key" in exc.message


def test_a_refusal_names_the_smallest_period_that_fits() -> None:
    # Free agents that heartbeat every 5 minutes: 49.5 - 12 = 37.5 calls/h of room,
    # 2 reads need an interval of at least 192 s: four 60 s ticks.
    with pytest.raises(PlanRefused) as refused:
        make_plan(given(agents_by_tier={"free": 100}, heartbeat_interval_s=300))
    assert refused.value.min_period_s == 240
    assert "the smallest wallet_period_s that fits is 240 s" in refused.value.message
    plan = make_plan(given(agents_by_tier={"free": 100}, heartbeat_interval_s=300, period_s=240))
    assert plan.slots == 4 and plan.own_by_tier == {"free": 100}
    assert plan.own_calls_per_hour == 30


def test_the_admin_key_is_used_first_for_the_agents_with_least_room() -> None:
    plan = make_plan(
        given(
            agents_by_tier={"free": 300, "starter": 200, "pro": 500},
            admin=True,
            admin_calls_per_s=10,  # 10 × 60 s / 2 reads = 300 agents a minute
        )
    )
    assert plan.admin_capacity_agents == 300
    assert plan.admin_by_tier == {"free": 300}
    assert plan.own_by_tier == {"starter": 200, "pro": 500}
    assert plan.admin_calls_per_s == pytest.approx(10)


def test_admin_capacity_short_of_the_keyless_agents_is_refused_and_a_longer_period_fits() -> None:
    keyless = given(agents_by_tier={NO_KEY: 10_000}, admin=True, admin_calls_per_s=100)
    with pytest.raises(PlanRefused) as refused:
        make_plan(keyless)  # 20,000 reads a minute = 333 calls/s
    assert refused.value.unplaced == {NO_KEY: 7_000}
    assert "takes 3000 agents every 60 s" in refused.value.message
    assert refused.value.min_period_s == 240  # 200 s needed, whole ticks
    plan = make_plan(replace(keyless, period_s=300))  # 5 ticks: still read every 300 s
    assert plan.read_interval_s == 300 and plan.admin_by_tier == {NO_KEY: 10_000}
    assert plan.admin_calls_per_s == pytest.approx(66.67, abs=0.01)


def test_keyless_agents_take_the_admin_key_before_agents_whose_window_is_too_small() -> None:
    with pytest.raises(PlanRefused) as refused:
        make_plan(
            given(agents_by_tier={"free": 100, NO_KEY: 40}, admin=True, admin_calls_per_s=1.5)
        )
    assert refused.value.unplaced == {"free": 95}


def test_keyless_agents_without_an_admin_key_never_fit() -> None:
    with pytest.raises(PlanRefused) as refused:
        make_plan(given(agents_by_tier={NO_KEY: 1, "pro": 5}))
    assert refused.value.min_period_s is None
    assert "agents without a usable key of their own need the admin key" in str(refused.value)


def test_a_period_shorter_than_the_tick_is_refused() -> None:
    with pytest.raises(PlanRefused, match="period 30 s is shorter than the sweep tick 60 s"):
        make_plan(given(period_s=30))


def test_the_read_interval_is_whole_ticks_within_the_period() -> None:
    plan = make_plan(given(period_s=150))
    assert plan.slots == 2 and plan.read_interval_s == 120


def test_an_unknown_tier_counts_as_the_lowest() -> None:
    with pytest.raises(PlanRefused) as refused:
        make_plan(given(agents_by_tier={"platinum": 3}))
    assert "platinum 3 agents (window 100/h" in refused.value.message


def test_an_empty_fleet_fits() -> None:
    plan = make_plan(given(agents_by_tier={}))
    assert plan.agents == 0 and plan.calls_per_hour == 0


def test_routes_put_the_planned_count_of_each_tier_on_the_admin_key() -> None:
    # 4 calls a minute on the admin key: two agents, both free (the least room).
    plan = make_plan(
        given(
            agents_by_tier={"free": 2, "pro": 3},
            admin=True,
            admin_calls_per_s=4 / 60,
        )
    )
    assert plan.admin_by_tier == {"free": 2} and plan.own_by_tier == {"pro": 3}
    agents = [("f-2", "free"), ("f-1", "free"), ("p-1", "pro"), ("p-3", "pro"), ("p-2", "pro")]
    assert routes(plan, agents) == {
        "f-1": True,
        "f-2": True,
        "p-1": False,
        "p-2": False,
        "p-3": False,
    }
    # More admin room than needed: the pro agents take the rest, lowest id first.
    plan = make_plan(given(agents_by_tier={"free": 2, "pro": 3}, admin=True, admin_calls_per_s=0.1))
    assert plan.admin_by_tier == {"free": 2, "pro": 1}
    assert [a for a, admin in sorted(routes(plan, agents).items()) if admin] == [
        "f-1",
        "f-2",
        "p-1",
    ]


def test_slots_are_stable_and_even() -> None:
    ids = [f"agent-{i:05d}" for i in range(10_000)]
    counts = Counter(slot_of(a, 5) for a in ids)
    assert set(counts) == set(range(5))
    assert max(counts.values()) - min(counts.values()) < 200  # ±2 % of 2,000
    assert [slot_of(a, 5) for a in ids[:50]] == [slot_of(a, 5) for a in ids[:50]]


def test_bad_input_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="headroom"):
        make_plan(given(headroom=1.0))
    with pytest.raises(ValueError, match="reads_per_agent"):
        make_plan(given(reads_per_agent=0))


def test_the_default_policy_fits_ten_thousand_keyless_agents_on_the_admin_key() -> None:
    from config.settings import load_settings
    from fleet.monitoring.plan import plan_input

    policy = load_settings().policy.monitoring
    plan = make_plan(plan_input(policy, {NO_KEY: 10_000}, tick_s=60, reads_per_agent=2, admin=True))
    assert plan.read_interval_s == 300 and plan.admin_by_tier == {NO_KEY: 10_000}
    assert plan.admin_calls_per_s <= policy.admin_calls_per_s
