"""Per-tool circuit breakers.

closed ──(threshold consecutive failures)──▶ open ──(reset_s elapsed)──▶ half-open
half-open lets one trial call through: success ▶ closed, failure ▶ open again.

While a breaker is open its tool fails immediately with no request made, so a
partial outage costs a handful of requests instead of a retry storm. Only
transient failures (the gateway did not answer properly) count; an answer that
blames the caller (4xx) proves the tool is up and counts as a success.

The lock makes a breaker safe to share between threads; in an event loop no
method awaits, so each runs atomically and the uncontended lock costs nothing.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int,
        reset_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state.value}, failures={self._failures})"

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state()

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> BreakerState | None:
        """May a request go out now? None if not, else the state that let it through.

        In half-open, a permitted request holds the one trial slot until its
        outcome is recorded or it is released.
        """
        with self._lock:
            state = self._state()
            if state is BreakerState.CLOSED:
                return state
            if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return state
            return None

    def is_open(self) -> bool:
        """True when calls would be refused (open, or half-open with its trial out)."""
        with self._lock:
            state = self._state()
            return state is BreakerState.OPEN or (
                state is BreakerState.HALF_OPEN and self._trial_in_flight
            )

    def retry_in(self) -> float:
        """Seconds until a trial call will be allowed (0 when it already is)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self.reset_s - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        with self._lock:
            was_open = self._opened_at is not None
            self._failures = 0
            self._opened_at = None
            self._trial_in_flight = False
        if was_open:
            log.warning("circuit breaker for %s closed", self.name)

    def record_failure(self) -> None:
        with self._lock:
            state = self._state()
            self._trial_in_flight = False
            self._failures += 1
            if state is BreakerState.CLOSED and self._failures < self.failure_threshold:
                return
            # Threshold reached, a failed trial, or a call that was already in
            # flight when the breaker opened: (re)start the open period.
            self._opened_at = self._clock()
        log.warning(
            "circuit breaker for %s open for %.1fs after %d consecutive failures",
            self.name,
            self.reset_s,
            self._failures,
        )

    def release(self) -> None:
        """The trial call ended without a verdict (cancelled, or a bug): free its slot."""
        with self._lock:
            self._trial_in_flight = False


class BreakerRegistry(Mapping[str, CircuitBreaker]):
    """One breaker per tool, created on first use."""

    def __init__(self, *, failure_threshold: int, reset_s: float, clock: Clock = time.monotonic):
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        self._clock = clock
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def get_or_create(self, tool: str) -> CircuitBreaker:
        breaker = self._breakers.get(tool)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.setdefault(
                    tool,
                    CircuitBreaker(
                        tool,
                        failure_threshold=self.failure_threshold,
                        reset_s=self.reset_s,
                        clock=self._clock,
                    ),
                )
        return breaker

    def states(self) -> dict[str, BreakerState]:
        """For dashboards and metrics: every tool's breaker state."""
        return {tool: breaker.state for tool, breaker in list(self._breakers.items())}

    def __getitem__(self, tool: str) -> CircuitBreaker:
        return self._breakers[tool]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._breakers))

    def __len__(self) -> int:
        return len(self._breakers)


__all__ = ["BreakerRegistry", "BreakerState", "CircuitBreaker", "Clock"]
