"""The work plane's admission, on fleet.budgets: estimate, reserve, settle, release.

Each attempt of a task is its own reservation (``{task_id}.{attempt}``): a task re-routed
after a failure before any spend has its first hold released and a second one taken for
the other agent, and the budgets' "same id answers the same" rule never hands the second
attempt the first one's answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from decimal import Decimal

from config.policy import Policy
from fleet.budgets.admission import (
    Budgets,
    BudgetStoreUnavailable,
    Charge,
    Refused,
    estimate_cost,
)

log = logging.getLogger(__name__)

SETTLE_ATTEMPTS = 3


class BudgetsAdmission:
    def __init__(self, budgets: Budgets, policy: Policy, *, left_ttl_s: float = 1.0) -> None:
        self._budgets = budgets
        self._policy = policy
        self._left_ttl_s = left_ttl_s
        self._left: dict[str, tuple[float, Decimal | None]] = {}

    def estimate(self, model: str, tokens: int) -> Decimal:
        return estimate_cost(self._policy, model, tokens, None)

    def reserve(
        self,
        *,
        task_id: str,
        agent_id: str,
        fleet: str,
        amount: Decimal,
        model: str,
        pool: str | None,
        trace_id: str | None,
    ) -> str | None:
        answer = self._budgets.reserve(
            Charge(task_id, agent_id, fleet, amount, model, pool=pool, trace_id=trace_id)
        )
        if isinstance(answer, Refused):
            return f"{answer.budget}: {answer.reason}"
        return None

    def settle(
        self,
        task_id: str,
        actual: Decimal,
        *,
        charged: Decimal | None,
        usage: Mapping[str, int] | None,
    ) -> None:
        for attempt in range(SETTLE_ATTEMPTS):
            try:
                self._budgets.settle(task_id, actual, charged=charged, usage=usage)
                return
            except BudgetStoreUnavailable:
                if attempt == SETTLE_ATTEMPTS - 1:
                    # The hold stays until it expires; the agent did spend: say so loudly.
                    log.error("settling %s (%s) failed: budget store unreachable", task_id, actual)
                    return
                time.sleep(0.05 * 2**attempt)

    def release(self, task_id: str) -> None:
        try:
            self._budgets.release(task_id)
        except BudgetStoreUnavailable:
            log.warning("releasing %s failed: the hold expires on its own", task_id)

    def budget_left(self, fleet: str) -> Decimal | None:
        """The fleet-day budget's remainder (cached ``left_ttl_s``); None when unknown."""
        now = time.monotonic()
        cached = self._left.get(fleet)
        if cached is not None and now - cached[0] < self._left_ttl_s:
            return cached[1]
        try:
            state = self._budgets.state(fleet)
            left: Decimal | None = Decimal(state["fleet_day"]["limit"]) - Decimal(
                state["fleet_day"]["used"]
            )
        except Exception:  # noqa: BLE001 - any failure here only makes the model choice blind
            left = None
        self._left[fleet] = (now, left)
        return left
