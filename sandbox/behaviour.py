"""Simulated agent behaviour: metrics and spending as pure functions of (profile, time).

Nothing here stores a time series. An agent is a 64-bit hash of (seed, agent_id)
plus the moment its behaviour started (its "origin"); every metric is computed
when asked, from the profile and the agent's age on the sandbox clock. That is
what lets 100,000 agents live in a few hundred bytes each and still drift,
degrade and breach their SLAs as the clock moves.

Profiles:

- ``healthy``: steady, well inside the standard and premium SLA templates.
- ``flaky``: healthy-ish, but in some 5-minute windows (chosen by hash) error
  rate and p99 spike and uptime drops: intermittent breaches.
- ``degrading``: latency, errors and accuracy worsen linearly with age; each
  agent crosses p99 2000 ms somewhere between 15 minutes and 2 hours.
- ``cost_runaway``: metrics fine, but cost per task (and so burn rate) grows
  linearly with age until capped; crosses $0.05/task within 15 min – 2 h.
- ``dead``: every call fails; no volume, no spending.
- ``idle`` (only when pinned by the admin API): healthy metrics, no volume and
  no spending, for tests that need balances to stay exactly put.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

HEALTHY, FLAKY, DEGRADING, COST_RUNAWAY, DEAD, IDLE = range(6)
PROFILE_NAMES: tuple[str, ...] = ("healthy", "flaky", "degrading", "cost_runaway", "dead", "idle")
PROFILE_IDS: dict[str, int] = {name: i for i, name in enumerate(PROFILE_NAMES)}
# Profiles a seed may assign; "idle" is only ever pinned on purpose.
MIXABLE: tuple[str, ...] = PROFILE_NAMES[:5]
DEFAULT_MIX: dict[str, float] = {
    "healthy": 80.0,
    "flaky": 8.0,
    "degrading": 5.0,
    "cost_runaway": 4.0,
    "dead": 3.0,
}

# The names get_analytics / search_agents_by_metrics accept.
METRIC_NAMES: tuple[str, ...] = (
    "latency_p50",
    "latency_p99",
    "error_rate",
    "tool_call_volume",
    "task_completion_rate",
    "uptime_pct",
    "accuracy_pct",
    "cost_per_task",
    "tasks_per_hour",
    "reputation",
)
DEFAULT_METRICS: tuple[str, ...] = METRIC_NAMES[:5]

DEAD_LATENCY_MS = 30000.0
FLAKY_WINDOW_S = 300.0
# A runaway agent is stopped by the per-task guardrail long before this, but
# the cap keeps an unattended sandbox's numbers finite.
RUNAWAY_MAX_COST_PER_TASK = 5.0

_MASK64 = (1 << 64) - 1
_INV64 = 1.0 / float(1 << 64)


def agent_hash(seed: int, agent_id: str) -> int:
    """A stable 64-bit hash of (seed, agent_id); str hash() is salted per process."""
    digest = hashlib.blake2b(f"{seed}:{agent_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _mix(x: int) -> int:
    """splitmix64 finaliser: turns related integers into unrelated ones."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def unit(h: int, k: int) -> float:
    """The k-th uniform number in [0, 1) derived from hash h."""
    return _mix(h ^ (k * 0xD1B54A32D192ED03 & _MASK64)) * _INV64


class ProfileMix:
    """Cumulative thresholds that map a hash to a profile, e.g. 80/8/5/4/3 %."""

    __slots__ = ("weights", "_cuts")

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        weights = dict(DEFAULT_MIX if weights is None else weights)
        for name, weight in weights.items():
            if name not in MIXABLE:
                raise ValueError(f"unknown profile {name!r} (expected one of {', '.join(MIXABLE)})")
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0):
                raise ValueError(f"weight of {name!r} must be a non-negative number")
        total = float(sum(weights.values()))
        if total <= 0:
            raise ValueError("profile weights must not all be zero")
        self.weights = {name: float(weights.get(name, 0.0)) for name in MIXABLE}
        cuts: list[tuple[float, int]] = []
        acc = 0.0
        for name in MIXABLE:
            acc += self.weights[name] / total
            cuts.append((acc, PROFILE_IDS[name]))
        self._cuts = tuple(cuts)

    @classmethod
    def parse(cls, text: str) -> ProfileMix:
        """``healthy=80,flaky=8,degrading=5,cost_runaway=4,dead=3`` (missing names weigh 0)."""
        weights: dict[str, float] = {}
        for part in text.split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"expected name=weight, got {part!r}")
            try:
                weights[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"weight of {name.strip()!r} is not a number") from None
        return cls(weights)

    def pick(self, h: int) -> int:
        u = unit(h, 0)
        for cut, profile in self._cuts:
            if u < cut:
                return profile
        return self._cuts[-1][1]


class Params:
    """An agent's fixed traits, drawn once from its hash (computed on first use)."""

    __slots__ = (
        "p50",
        "tail",
        "err",
        "completion",
        "uptime",
        "accuracy",
        "cost",
        "tasks_per_hour",
        "calls_per_task",
        "breach_after_h",
        "flaky_share",
    )

    def __init__(self, h: int) -> None:
        self.p50 = 40.0 + 80.0 * unit(h, 1)  # ms
        self.tail = 2.0 + 1.5 * unit(h, 2)  # p99 / p50
        self.err = 0.001 + 0.019 * unit(h, 3)
        self.completion = 0.96 + 0.035 * unit(h, 4)
        self.uptime = 99.92 + 0.07 * unit(h, 5)
        self.accuracy = 98.5 + 1.3 * unit(h, 6)
        self.cost = 0.004 + 0.016 * unit(h, 7)  # $ per task
        self.tasks_per_hour = 5.0 + 15.0 * unit(h, 8)
        self.calls_per_task = 3.0 + 5.0 * unit(h, 9)
        # When a degrading/runaway agent crosses its standard-support term.
        self.breach_after_h = 0.25 + 1.75 * unit(h, 10)
        self.flaky_share = 0.25 + 0.2 * unit(h, 11)


class Metrics:
    """Instantaneous metrics of one agent."""

    __slots__ = (
        "latency_p50",
        "latency_p99",
        "error_rate",
        "task_completion_rate",
        "uptime_pct",
        "accuracy_pct",
        "cost_per_task",
        "tasks_per_hour",
        "calls_per_hour",
    )

    def __init__(
        self,
        p50: float,
        p99: float,
        error_rate: float,
        completion: float,
        uptime: float,
        accuracy: float,
        cost: float,
        tasks_per_hour: float,
        calls_per_task: float,
    ) -> None:
        self.latency_p50 = p50
        self.latency_p99 = p99
        self.error_rate = min(1.0, max(0.0, error_rate))
        self.task_completion_rate = min(1.0, max(0.0, completion))
        self.uptime_pct = min(100.0, max(0.0, uptime))
        self.accuracy_pct = min(100.0, max(0.0, accuracy))
        self.cost_per_task = cost
        self.tasks_per_hour = tasks_per_hour
        self.calls_per_hour = tasks_per_hour * calls_per_task

    @property
    def burn_rate_per_hour(self) -> float:
        return self.tasks_per_hour * self.cost_per_task


def _noise(h: int, t: float, k: int, spread: float) -> float:
    """A factor around 1 that changes every sandbox minute, so numbers move."""
    return 1.0 + spread * (unit(h ^ int(t // 60.0), k) - 0.5)


def degradation(p: Params, age_h: float) -> float:
    """0 at the origin, 1 when the agent crosses its standard-support terms."""
    return max(0.0, age_h) / p.breach_after_h


def runaway_cost(p: Params, age_h: float) -> float:
    """Cost per task grows linearly and crosses $0.05 at breach_after_h."""
    return min(RUNAWAY_MAX_COST_PER_TASK, p.cost + (0.05 - p.cost) * degradation(p, age_h))


def metrics_at(profile: int, h: int, p: Params, now: float, origin: float) -> Metrics:
    """Metrics of an agent with this profile/hash/params at sandbox time ``now``."""
    age_h = max(0.0, now - origin) / 3600.0
    jitter = _noise(h, now, 20, 0.08)
    p50 = p.p50 * jitter
    p99 = p50 * p.tail
    err = p.err * _noise(h, now, 21, 0.2)
    if profile == HEALTHY:
        return Metrics(
            p50,
            p99,
            err,
            p.completion,
            p.uptime,
            p.accuracy,
            p.cost,
            p.tasks_per_hour,
            p.calls_per_task,
        )
    if profile == IDLE:
        return Metrics(
            p50, p99, err, p.completion, p.uptime, p.accuracy, p.cost, 0.0, p.calls_per_task
        )
    if profile == DEAD:
        return Metrics(DEAD_LATENCY_MS, DEAD_LATENCY_MS, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    if profile == FLAKY:
        window = int(now // FLAKY_WINDOW_S)
        if unit(h ^ window, 22) < p.flaky_share:
            spike = 4.0 + 6.0 * unit(h ^ window, 23)
            return Metrics(
                p50 * 2.0,
                p99 * spike,
                0.08 + 0.22 * unit(h ^ window, 24),
                p.completion - 0.15,
                98.0 + 1.3 * unit(h ^ window, 25),
                p.accuracy - 2.0,
                p.cost,
                p.tasks_per_hour,
                p.calls_per_task * 1.5,
            )
        return Metrics(
            p50,
            p99 * 1.3,
            err * 2.5,
            p.completion - 0.02,
            p.uptime - 0.1,
            p.accuracy,
            p.cost,
            p.tasks_per_hour,
            p.calls_per_task,
        )
    if profile == DEGRADING:
        # Every term drifts linearly and crosses the standard-support line
        # (p99 2000 ms, uptime 99.5 %, accuracy 95 %) together at d == 1, so
        # when an agent breaches is predictable from its breach_after_h.
        d = degradation(p, age_h)
        return Metrics(
            p50 + (650.0 - p.p50) * d,
            p99 + (2000.0 - p.p50 * p.tail) * d,
            err + 0.05 * d,
            p.completion - 0.1 * d,
            p.uptime - (p.uptime - 99.5) * d,
            p.accuracy - (p.accuracy - 95.0) * d,
            p.cost,
            p.tasks_per_hour,
            p.calls_per_task,
        )
    # COST_RUNAWAY: a loop of tool calls, so calls per task grow with the cost.
    cost = runaway_cost(p, age_h)
    return Metrics(
        p50,
        p99,
        err,
        p.completion,
        p.uptime,
        p.accuracy,
        cost,
        p.tasks_per_hour,
        p.calls_per_task * cost / p.cost,
    )


def spend_between(profile: int, p: Params, origin: float, t0: float, t1: float) -> float:
    """Dollars an agent's simulated work costs between sandbox times t0 and t1."""
    if t1 <= t0 or profile in (DEAD, IDLE):
        return 0.0
    hours = (t1 - t0) / 3600.0
    if profile != COST_RUNAWAY:
        return p.tasks_per_hour * p.cost * hours
    # Burn rate is linear in age until capped: integrate piecewise.
    a0 = max(0.0, t0 - origin) / 3600.0
    a1 = max(0.0, t1 - origin) / 3600.0
    slope = (0.05 - p.cost) / p.breach_after_h  # $/task per hour of age
    cap_age = (RUNAWAY_MAX_COST_PER_TASK - p.cost) / slope
    total = 0.0
    lo, hi = a0, min(a1, cap_age)
    if hi > lo:
        total += p.cost * (hi - lo) + slope * (hi * hi - lo * lo) / 2.0
    lo = max(a0, cap_age)
    if a1 > lo:
        total += RUNAWAY_MAX_COST_PER_TASK * (a1 - lo)
    return p.tasks_per_hour * total


def reputation_score(error_rate: float, completion: float, p99: float, accuracy: float) -> float:
    """0..1: mostly reliability, then completion, latency and accuracy."""
    reliability = 1.0 - min(1.0, error_rate / 0.2)
    latency = min(1.0, max(0.0, (5000.0 - p99) / 4800.0))
    acc = min(1.0, max(0.0, (accuracy - 80.0) / 20.0))
    score = 0.35 * reliability + 0.25 * completion + 0.2 * latency + 0.2 * acc
    return round(min(1.0, max(0.0, score)), 4)
