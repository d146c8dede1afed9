"""Admission against the budgets with real parts: a real Redis, reservations fired at once
from several real processes (spawned), the store stopped under them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from benchmarks.budget import admit_concurrently, bench_policy, make_charges
from fleet.budgets.admission import (
    Admitted,
    Budgets,
    BudgetStoreUnavailable,
    Charge,
    Refused,
    UnknownReservation,
)
from fleet.clock import ManualClock, SystemClock
from stack.processes import Supervisor, free_port, start_redis

pytestmark = pytest.mark.integration

BUDGET = Decimal("5.00")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("budget-redis")
    port = free_port()
    with Supervisor(log_dir=base) as sup:
        start_redis(sup, port, base / "redis")
        yield f"redis://127.0.0.1:{port}/0"


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def fleet_name() -> str:
    return f"f-{time.monotonic_ns()}"


def test_1000_concurrent_admissions_from_four_processes_never_pass_the_fleet_day_budget(
    redis_url: str,
) -> None:
    policy = bench_policy(BUDGET)
    fleet = fleet_name()
    charges = make_charges(1000, policy, fleet=fleet, agents=50)
    tally = admit_concurrently(redis_url, policy, charges, processes=4, threads=32)
    assert tally["exit_codes"] == [0, 0, 0, 0]
    assert tally["answers"] == 1000
    assert tally["admitted"] + tally["refused"] == 1000
    assert sum(Decimal(c["amount"]) for c in charges) > 4 * BUDGET, "the budget is contended"
    assert 0 < tally["admitted_sum"] <= BUDGET, "overshoot: admitted more than the budget"
    budgets = Budgets(client(redis_url), policy, SystemClock())
    assert budgets.fleet_day_used(fleet) == tally["admitted_sum"], "Redis holds what was admitted"
    # One reservation met the ceiling, which paused the fleet: every later one says so.
    assert tally["refused_by"].get("fleet_day") == 1
    assert set(tally["refused_by"]) <= {"fleet_day", "spending_paused"}
    assert tally["pause_events"] == 1, "the pause is reported once, by the process that hit it"
    assert budgets.spending_paused(fleet)


def test_1000_concurrent_admissions_for_one_agent_never_pass_its_hour(redis_url: str) -> None:
    hour = Decimal("2.50")
    policy = bench_policy(Decimal("1000.00"), per_agent_hour=hour)
    fleet = fleet_name()
    charges = make_charges(1000, policy, fleet=fleet, agents=1, seed=11)
    tally = admit_concurrently(redis_url, policy, charges, processes=3, threads=32)
    assert 0 < tally["admitted_sum"] <= hour
    assert set(tally["refused_by"]) == {"agent_hour"}
    budgets = Budgets(client(redis_url), policy, SystemClock())
    assert budgets.agent_hour_used(charges[0]["agent_id"]) == tally["admitted_sum"]
    assert not budgets.spending_paused(fleet), "an agent's hour pauses nobody's fleet"
    # The refusal left no room a refused charge would have fit.
    smallest = min(Decimal(c["amount"]) for c in charges)
    assert hour - tally["admitted_sum"] < smallest or tally["refused"] == 0


def test_the_same_task_reserved_twice_holds_once_and_settles_once(redis_url: str) -> None:
    policy = bench_policy(Decimal("1.00"))
    budgets = Budgets(client(redis_url), policy, SystemClock())
    fleet = fleet_name()
    charge = Charge("t-once-" + fleet, "a-once", fleet, Decimal("0.40"), "frontier")
    first = budgets.reserve(charge)
    again = budgets.reserve(charge)
    assert isinstance(first, Admitted) and again == first
    assert budgets.fleet_day_used(fleet) == Decimal("0.40")
    budgets.settle(charge.task_id, Decimal("0.25"), charged=Decimal("0.10"))
    budgets.settle(charge.task_id, Decimal("0.25"))
    assert budgets.fleet_day_used(fleet) == Decimal("0.25"), "the rest released, once"
    assert budgets.agent_hour_used("a-once") == Decimal("0.25")
    assert budgets.reserve(charge) == first, "settled: still the first answer, no new hold"
    assert budgets.fleet_day_used(fleet) == Decimal("0.25")
    with pytest.raises(UnknownReservation):
        budgets.settle("never-reserved-" + fleet, Decimal("0.01"))


def test_a_released_or_vanished_reservation_gives_its_hold_back(redis_url: str) -> None:
    policy = bench_policy(Decimal("1.00"))
    clock = ManualClock()
    clock.set(clock.now().replace(year=2030))
    budgets = Budgets(client(redis_url), policy, clock)
    fleet = fleet_name()
    failed = Charge("t-failed-" + fleet, "a-rel", fleet, Decimal("0.30"), "mid")
    vanished = Charge("t-vanished-" + fleet, "a-rel", fleet, Decimal("0.50"), "mid")
    assert isinstance(budgets.reserve(failed), Admitted)
    assert isinstance(budgets.reserve(vanished), Admitted)
    budgets.release(failed.task_id)
    budgets.release(failed.task_id)
    assert budgets.fleet_day_used(fleet) == Decimal("0.50")
    clock.advance(policy.reservation_ttl_s - 1)
    budgets.sweep_expired()
    assert budgets.fleet_day_used(fleet) == Decimal("0.50"), "not expired yet"
    clock.advance(2)
    assert budgets.sweep_expired() >= 1
    assert budgets.fleet_day_used(fleet) == Decimal("0")
    # A task that did spend after all, past its expiry: its spend is still booked.
    budgets.settle(vanished.task_id, Decimal("0.20"))
    assert budgets.fleet_day_used(fleet) == Decimal("0.20")


def test_an_unreachable_budget_store_refuses_every_admission(tmp_path: Path) -> None:
    port = free_port()
    policy = bench_policy(Decimal("100.00"))
    with Supervisor(log_dir=tmp_path) as sup:
        proc = start_redis(sup, port, tmp_path / "redis")
        url = f"redis://127.0.0.1:{port}/0"
        store = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=1, socket_connect_timeout=1
        )
        budgets = Budgets(store, policy, SystemClock())
        fleet = fleet_name()
        up = budgets.reserve(Charge("t-up-" + fleet, "a-1", fleet, Decimal("0.01"), "small"))
        assert isinstance(up, Admitted), "admitted while the store answers"
        sup.stop(proc)
        answers = [
            budgets.reserve(Charge(f"t-down-{i}", "a-1", fleet, Decimal("0.01"), "small"))
            for i in range(20)
        ]
        assert all(isinstance(a, Refused) and a.budget == "store_unreachable" for a in answers)
        assert budgets.spending_paused(fleet), "a store that cannot say is a paused one"
        with pytest.raises(BudgetStoreUnavailable):
            budgets.settle("t-up-" + fleet, Decimal("0.01"))
        # From several processes at once, too.
        charges = make_charges(200, policy, fleet=fleet, agents=5)
        tally = admit_concurrently(url, policy, charges, processes=2, threads=16, timeout_s=1)
        assert tally["admitted"] == 0
        assert tally["refused_by"] == {"store_unreachable": 200}
