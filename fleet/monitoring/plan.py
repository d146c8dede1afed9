"""The wallet poll's plan: which agents are read through which key, how often, and
whether that fits the gateway's rate windows at all.

Only a poll can tell an agent's balance and budget (heartbeats carry the
agent's own measurements, not its wallet), and wallet reads are own-agent or
admin only (real-gateway.md §2). The gateway limits every agent id to a sliding
3600 s window shared by all its keys, sized by the tier of the key used
(§9); admin-scope keys are not limited at all, but the gateway behind them has
a finite capacity (a local SQLite gateway answered ~200 reads/s).

The plan, computed from the fleet's size by key tier, the tiers' windows, the
period and the headroom:

* every agent is read once per *read interval*: the largest whole number of
  sweep ticks within ``period_s``, one slot of the fleet per tick;
* the admin key takes as many agents as ``admin_calls_per_s`` allows (an
  average over the read interval), lowest tiers first: they have the least
  room of their own;
* the rest go through their own key, each using at most its window minus the
  headroom left to the agent's own work and minus its heartbeats (they count
  against the same window);
* if some agents fit nowhere, the plan is refused with the numbers, and the
  smallest period that would fit, if any.

Pure: no I/O, no clock. :func:`make_plan` returns a :class:`WalletPlan` or raises
:class:`PlanRefused`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from config.policy import MonitoringPolicy

# The tier of agents the commander holds no key for: only the admin key can read them.
NO_KEY = "none"
# Read intervals tried when looking for the smallest period that fits (ticks).
_MAX_SLOTS = 1 << 20


@dataclass(frozen=True, slots=True)
class PlanInput:
    agents_by_tier: Mapping[str, int]  # agents polled, by the tier of the key held for each
    windows: Mapping[str, int]  # the gateway's calls per hour per agent, by key tier
    period_s: float  # every agent's wallet read at least this often
    tick_s: float  # the sweep's tick: one slot of the fleet per tick
    reads_per_agent: int
    headroom: float  # fraction of an agent's own window left to the agent
    heartbeat_interval_s: float | None  # the agent's heartbeats, same window; None: none sent
    admin: bool  # an admin-scope key is configured
    admin_calls_per_s: float  # the share of the gateway's capacity the poll may take

    @property
    def agents(self) -> int:
        return sum(self.agents_by_tier.values())

    @property
    def heartbeats_per_hour(self) -> float:
        if not self.heartbeat_interval_s:
            return 0.0
        return 3600.0 / self.heartbeat_interval_s

    def own_budget_per_hour(self, tier: str) -> float:
        """Calls an hour the poll may make with an agent's own key of ``tier``.

        The gateway admits a call while the count including it stays below the
        limit (a 100/h key answers 99), so the usable window is one less."""
        if tier == NO_KEY:
            return 0.0
        window = self.window_of(tier)
        return max(0.0, (window - 1) * (1.0 - self.headroom) - self.heartbeats_per_hour)

    def window_of(self, tier: str) -> int:
        # A tier the policy does not know counts as the lowest one it does.
        if tier in self.windows:
            return self.windows[tier]
        return min(self.windows.values()) if self.windows else 0


@dataclass(frozen=True, slots=True)
class WalletPlan:
    agents: int
    reads_per_agent: int
    tick_s: float
    slots: int  # ticks per read interval: agent i is read in tick slot(i) mod slots
    admin_by_tier: dict[str, int]  # agents read through the admin key
    own_by_tier: dict[str, int]  # agents read through their own key
    admin_capacity_agents: int  # agents the admin share could take in one interval
    own_budget_per_hour: dict[str, float]  # each tier's room for polls, per agent
    headroom: float

    @property
    def read_interval_s(self) -> float:
        return self.slots * self.tick_s

    @property
    def own_calls_per_hour(self) -> float:
        """Calls an hour the poll makes with one agent's own key."""
        return self.reads_per_agent * 3600.0 / self.read_interval_s

    @property
    def admin_calls_per_s(self) -> float:
        """The admin key's planned average rate."""
        return sum(self.admin_by_tier.values()) * self.reads_per_agent / self.read_interval_s

    @property
    def calls_per_hour(self) -> float:
        return self.agents * self.reads_per_agent * 3600.0 / self.read_interval_s

    def describe(self) -> str:
        admin = sum(self.admin_by_tier.values())
        own = sum(self.own_by_tier.values())
        parts = [
            f"{self.agents} agents × {self.reads_per_agent} wallet reads every "
            f"{self.read_interval_s:.0f} s ({self.slots} tick(s) of {self.tick_s:.0f} s, "
            f"{self.calls_per_hour:,.0f} calls/h)",
            f"admin key {admin} agents at {self.admin_calls_per_s:.1f} calls/s",
        ]
        if own:
            tiers = ", ".join(
                f"{tier} {n} (room {self.own_budget_per_hour[tier]:,.0f}/h)"
                for tier, n in sorted(self.own_by_tier.items())
                if n
            )
            parts.append(
                f"own keys {own} agents at {self.own_calls_per_hour:.0f} calls/h each: {tiers}"
            )
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "fits": True,
            "agents": self.agents,
            "reads_per_agent": self.reads_per_agent,
            "read_interval_s": self.read_interval_s,
            "slots": self.slots,
            "tick_s": self.tick_s,
            "admin_by_tier": self.admin_by_tier,
            "own_by_tier": self.own_by_tier,
            "admin_calls_per_s": round(self.admin_calls_per_s, 3),
            "own_calls_per_hour": round(self.own_calls_per_hour, 3),
            "own_budget_per_hour": {t: round(v, 1) for t, v in self.own_budget_per_hour.items()},
            "calls_per_hour": round(self.calls_per_hour, 1),
            "summary": self.describe(),
        }


class PlanRefused(Exception):
    """The fleet cannot be polled within the windows: the message names the numbers."""

    def __init__(
        self, message: str, *, unplaced: dict[str, int], min_period_s: float | None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.unplaced = unplaced  # agents by tier that fit neither the admin share nor their own
        self.min_period_s = min_period_s  # the smallest period that fits, None if none does

    def as_dict(self) -> dict[str, Any]:
        return {
            "fits": False,
            "refused": self.message,
            "unplaced": self.unplaced,
            "min_period_s": self.min_period_s,
        }


def make_plan(given: PlanInput) -> WalletPlan:
    """The plan for ``given``, or :class:`PlanRefused` naming what does not fit."""
    if given.reads_per_agent < 1:
        raise ValueError("reads_per_agent must be at least 1")
    if given.tick_s <= 0 or given.period_s <= 0:
        raise ValueError("tick_s and period_s must be positive")
    if not 0 <= given.headroom < 1:
        raise ValueError("headroom must be in [0, 1)")
    if any(n < 0 for n in given.agents_by_tier.values()):
        raise ValueError("agent counts must not be negative")
    slots = math.floor(given.period_s / given.tick_s + 1e-9)
    if slots < 1:
        raise PlanRefused(
            f"wallet plan refused: the period {given.period_s:g} s is shorter than the "
            f"sweep tick {given.tick_s:g} s (schedule.metrics_sweep_s); every agent is read "
            "once per tick at most",
            unplaced=dict(given.agents_by_tier),
            min_period_s=given.tick_s,
        )
    plan, unplaced = _place(given, slots)
    if plan is not None:
        return plan
    raise PlanRefused(
        _refusal(given, slots, unplaced), unplaced=unplaced, min_period_s=_min_period(given)
    )


def _admin_capacity(given: PlanInput, slots: int) -> int:
    if not given.admin:
        return 0
    interval = slots * given.tick_s
    return math.floor(given.admin_calls_per_s * interval / given.reads_per_agent + 1e-9)


def _place(given: PlanInput, slots: int) -> tuple[WalletPlan | None, dict[str, int]]:
    """Place every agent on the admin key or its own, or say which ones fit neither."""
    need = given.reads_per_agent * 3600.0 / (slots * given.tick_s)
    budgets = {tier: given.own_budget_per_hour(tier) for tier in given.agents_by_tier}
    capacity = _admin_capacity(given, slots)
    # Agents with no key of their own first, then those whose own room is too small, then
    # lowest room first: the admin key is worth most to the agents with the least of their own.
    order = sorted(
        given.agents_by_tier,
        key=lambda t: (t != NO_KEY, budgets[t] + 1e-9 >= need, budgets[t], t),
    )
    admin: dict[str, int] = {}
    own: dict[str, int] = {}
    unplaced: dict[str, int] = {}
    left = capacity
    for tier in order:
        count = given.agents_by_tier[tier]
        taken = min(count, left)
        left -= taken
        admin[tier] = taken
        rest = count - taken
        if rest and budgets[tier] + 1e-9 >= need:
            own[tier] = rest
        elif rest:
            unplaced[tier] = rest
    if unplaced:
        return None, unplaced
    plan = WalletPlan(
        agents=given.agents,
        reads_per_agent=given.reads_per_agent,
        tick_s=given.tick_s,
        slots=slots,
        admin_by_tier={t: n for t, n in admin.items() if n},
        own_by_tier={t: n for t, n in own.items() if n},
        admin_capacity_agents=capacity,
        own_budget_per_hour=budgets,
        headroom=given.headroom,
    )
    return plan, {}


def _min_period(given: PlanInput) -> float | None:
    """The smallest whole number of ticks that fits, in seconds; None if no period does."""
    if _place(given, _MAX_SLOTS)[0] is None:
        return None
    low, high = 1, 1
    while _place(given, high)[0] is None:
        low, high = high + 1, high * 2
    while low < high:
        mid = (low + high) // 2
        if _place(given, mid)[0] is None:
            low = mid + 1
        else:
            high = mid
    return high * given.tick_s


def _refusal(given: PlanInput, slots: int, unplaced: Mapping[str, int]) -> str:
    interval = slots * given.tick_s
    need = given.reads_per_agent * 3600.0 / interval
    capacity = _admin_capacity(given, slots)
    if given.admin:
        admin = (
            f"the admin key's share {given.admin_calls_per_s:g} calls/s takes {capacity} "
            f"agents every {interval:.0f} s"
        )
    else:
        admin = "no admin key"
    rooms = ", ".join(
        f"{tier} {n} agents (window {given.window_of(tier) if tier != NO_KEY else 0}/h leaves "
        f"{given.own_budget_per_hour(tier):,.0f}/h)"
        for tier, n in sorted(unplaced.items())
    )
    minimum = _min_period(given)
    fix = (
        f"the smallest wallet_period_s that fits is {minimum:.0f} s"
        if minimum is not None
        else "no period fits: agents without a usable key of their own need the admin key"
    )
    return (
        f"wallet plan refused: {given.agents} agents × {given.reads_per_agent} reads every "
        f"{interval:.0f} s need {need:.0f} calls/h per agent; {admin}; own windows after "
        f"{given.headroom:.0%} headroom and {given.heartbeats_per_hour:.0f} heartbeats/h: "
        f"{sum(unplaced.values())} agents fit neither: {rooms}; {fix}"
    )


def plan_input(
    policy: MonitoringPolicy,
    agents_by_tier: Mapping[str, int],
    *,
    tick_s: float,
    reads_per_agent: int,
    admin: bool,
) -> PlanInput:
    """The plan's input from the policy's monitoring section and the fleet as it is."""
    return PlanInput(
        agents_by_tier=dict(agents_by_tier),
        windows=dict(policy.tier_windows),
        period_s=policy.wallet_period_s,
        tick_s=tick_s,
        reads_per_agent=reads_per_agent,
        headroom=policy.wallet_headroom,
        heartbeat_interval_s=policy.heartbeat_interval_s,
        admin=admin,
        admin_calls_per_s=policy.admin_calls_per_s,
    )


def slot_of(agent_id: str, slots: int) -> int:
    """The tick slot an agent is read in: stable across fleet changes, spread evenly."""
    return zlib.crc32(agent_id.encode()) % slots


def routes(plan: WalletPlan, agents: Iterable[tuple[str, str]]) -> dict[str, bool]:
    """agent id -> True when it is read through the admin key, for (agent id, key tier)
    pairs: per tier, the first ``plan.admin_by_tier[tier]`` agents in id order."""
    by_tier: dict[str, list[str]] = {}
    for agent_id, tier in agents:
        by_tier.setdefault(tier, []).append(agent_id)
    out: dict[str, bool] = {}
    for tier, ids in by_tier.items():
        ids.sort()
        on_admin = plan.admin_by_tier.get(tier, 0)
        for i, agent_id in enumerate(ids):
            out[agent_id] = i < on_admin
    return out


__all__ = [
    "NO_KEY",
    "PlanInput",
    "PlanRefused",
    "WalletPlan",
    "make_plan",
    "plan_input",
    "routes",
    "slot_of",
]
