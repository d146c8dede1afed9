"""Model routing (policy ``work.models``): which model a task runs on, and why."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from config.policy import ModelRoutingPolicy


@dataclass(frozen=True)
class ModelChoice:
    model: str
    reason: str


def choose_model(
    policy: ModelRoutingPolicy, estimated_tokens: int, budget_left: Decimal | None
) -> ModelChoice:
    """Small under ``small_below_tokens``; otherwise frontier while the budget left is above
    ``frontier_min_budget_left``, mid-tier at or below it. Budget left unknown: frontier
    (admission still holds the budgets)."""
    if estimated_tokens < policy.small_below_tokens:
        return ModelChoice(
            policy.small, f"{estimated_tokens} estimated tokens < {policy.small_below_tokens}"
        )
    if budget_left is None:
        return ModelChoice(policy.frontier, "budget left unknown")
    if budget_left > policy.frontier_min_budget_left:
        return ModelChoice(
            policy.frontier, f"budget left {budget_left} > {policy.frontier_min_budget_left}"
        )
    return ModelChoice(
        policy.mid, f"budget left {budget_left} <= {policy.frontier_min_budget_left}"
    )
