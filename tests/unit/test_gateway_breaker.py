from __future__ import annotations

import threading

import pytest

from fleet.gateway.breaker import BreakerRegistry, BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    # A call, not the property, so type checkers do not narrow between asserts.
    return breaker.state


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("get_balance", failure_threshold=3, reset_s=10.0, clock=clock)


def test_closed_until_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow() is BreakerState.CLOSED
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    assert breaker.allow() is None
    assert breaker.is_open()


def test_success_resets_the_count(breaker: CircuitBreaker) -> None:
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()
    for _ in range(2):
        breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED


def test_half_open_after_reset_admits_exactly_one_trial(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.now = 9.99
    assert breaker.retry_in() == pytest.approx(0.01)
    assert breaker.allow() is None
    clock.now = 10.0
    assert state(breaker) is BreakerState.HALF_OPEN
    assert not breaker.is_open()
    assert breaker.allow() is BreakerState.HALF_OPEN
    assert breaker.is_open()
    assert breaker.allow() is None  # only one trial at a time


def test_failed_trial_reopens_for_a_full_period(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.now = 10.0
    assert breaker.allow()
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    assert breaker.retry_in() == pytest.approx(10.0)
    clock.now = 19.9
    assert breaker.allow() is None


def test_successful_trial_closes(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.now = 10.0
    assert breaker.allow()
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.retry_in() == 0.0
    # Closed means the full threshold is needed again.
    breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED


def test_released_trial_frees_the_slot(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.now = 10.0
    assert breaker.allow()
    breaker.release()
    assert breaker.allow() is BreakerState.HALF_OPEN


def test_half_open_admits_one_trial_across_threads(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.now = 10.0
    start = threading.Barrier(16)
    admitted: list[object] = []

    def contend() -> None:
        start.wait()
        if breaker.allow() is not None:
            admitted.append(True)

    threads = [threading.Thread(target=contend) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert admitted == [True]


def test_threshold_must_be_positive(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker("x", failure_threshold=0, reset_s=1.0, clock=clock)


def test_registry_creates_one_breaker_per_tool(clock: FakeClock) -> None:
    registry = BreakerRegistry(failure_threshold=2, reset_s=5.0, clock=clock)
    first = registry.get_or_create("get_balance")
    assert registry.get_or_create("get_balance") is first
    registry.get_or_create("create_wallet").record_failure()
    registry.get_or_create("create_wallet").record_failure()
    assert registry.states() == {
        "get_balance": BreakerState.CLOSED,
        "create_wallet": BreakerState.OPEN,
    }
    assert len(registry) == 2 and set(registry) == {"get_balance", "create_wallet"}
    assert registry["create_wallet"].failure_threshold == 2
