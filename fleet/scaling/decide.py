"""The autoscaler's decision: inputs in, one decision out; no I/O, no clock of its own.

Order (issue 15 part 4, operations rules): a segment in its cooldown holds; burn over
its limit scales down on cost; pending tasks per healthy agent above
``scale_up_queue_per_agent`` scale up by ``scale_up_step``, below
``scale_down_queue_per_agent`` scale down by ``scale_down_step``; every step is cut so
the segment's size stays within ``min_agents``..``max_agents``, and a step cut to
nothing is a hold. A segment outside those bounds (a smaller manifest group, a policy
changed since) is brought back towards them a step at a time, whatever its load.
Every number comes from :class:`config.policy.ScalingPolicy`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from config.policy import ScalingPolicy


class Action(StrEnum):
    SCALE_UP = "scale_up"
    SCALE_DOWN = "scale_down"
    COST_SCALE_DOWN = "cost_scale_down"
    HOLD = "hold"


@dataclass(frozen=True)
class Inputs:
    """What one segment looks like at one pass.

    pending: tasks routed to the segment's agents and not finished (the sum of their
        in-flight counters in Redis, which routing increments at dispatch and
        decrements when the task ends);
    healthy: the segment's active agents whose latest monitoring snapshot is fresh and
        healthy;
    size: agents the segment has or is getting (active + provisioning): what min/max bound;
    burn / burn_limit: the fleet's spend today from the ledger, and its fleet-day budget.
    """

    segment: str
    pending: int
    healthy: int
    size: int
    burn: Decimal = Decimal("0")
    burn_limit: Decimal | None = None
    now: datetime | None = None
    cooldown_until: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
            elif isinstance(value, Decimal):
                out[key] = format(value, "f")
            else:
                out[key] = value
        return out


@dataclass(frozen=True)
class Decision:
    action: Action
    count: int
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)


def per_agent(inputs: Inputs) -> float | None:
    """Pending tasks per healthy agent; None when no agent is healthy."""
    return inputs.pending / inputs.healthy if inputs.healthy else None


def decide(policy: ScalingPolicy, inputs: Inputs) -> Decision:
    ratio = per_agent(inputs)
    seen = {
        **inputs.as_json(),
        "pending_per_healthy": None if ratio is None else round(ratio, 3),
        "scale_up_above": policy.scale_up_queue_per_agent,
        "scale_down_below": policy.scale_down_queue_per_agent,
        "min_agents": policy.min_agents,
        "max_agents": policy.max_agents,
    }

    def hold(reason: str) -> Decision:
        return Decision(Action.HOLD, 0, reason, seen)

    def down(action: Action, why: str) -> Decision:
        count = min(policy.scale_down_step, inputs.size - policy.min_agents)
        if count <= 0:
            where = "at" if inputs.size == policy.min_agents else "below"
            return hold(f"{why}, but the segment is {where} its minimum ({policy.min_agents})")
        return Decision(action, count, f"{why}: retire {count}", seen)

    if (
        inputs.cooldown_until is not None
        and inputs.now is not None
        and inputs.now < inputs.cooldown_until
    ):
        return hold(f"cooldown until {inputs.cooldown_until.isoformat()}")
    if inputs.burn_limit is not None and inputs.burn > inputs.burn_limit:
        return down(
            Action.COST_SCALE_DOWN, f"burn {inputs.burn} over the limit {inputs.burn_limit}"
        )
    if inputs.size > policy.max_agents:
        # Above max (the policy was lowered): back towards it, a step at a time.
        count = min(policy.scale_down_step, inputs.size - policy.max_agents)
        return Decision(
            Action.SCALE_DOWN, count, f"size {inputs.size} above max {policy.max_agents}", seen
        )
    if inputs.size < policy.min_agents:
        count = min(policy.scale_up_step, policy.min_agents - inputs.size)
        return Decision(
            Action.SCALE_UP,
            count,
            f"size {inputs.size} below min {policy.min_agents}: provision {count}",
            seen,
        )
    if ratio is None:
        if inputs.pending > 0:
            ratio = float("inf")
        else:
            return hold("no healthy agent and nothing pending: no load to judge")
    if ratio > policy.scale_up_queue_per_agent:
        count = min(policy.scale_up_step, policy.max_agents - inputs.size)
        why = f"{ratio:.2f} pending per healthy agent > {policy.scale_up_queue_per_agent:g}"
        if count <= 0:
            return hold(f"{why}, but the segment is at its maximum ({policy.max_agents})")
        return Decision(Action.SCALE_UP, count, f"{why}: provision {count}", seen)
    if ratio < policy.scale_down_queue_per_agent:
        return down(
            Action.SCALE_DOWN,
            f"{ratio:.2f} pending per healthy agent < {policy.scale_down_queue_per_agent:g}",
        )
    return hold(
        f"{ratio:.2f} pending per healthy agent within "
        f"[{policy.scale_down_queue_per_agent:g}, {policy.scale_up_queue_per_agent:g}]"
    )
