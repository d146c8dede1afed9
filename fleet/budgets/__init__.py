"""Budgets and the spend ledger (operations §3): admission in one Redis script, settlement,
the ledger off the hot path, the fleet-day pause and its approval-gated resume and raise.

    budgets = runtime.budgets
    answer = budgets.reserve(Charge(task_id, agent_id, fleet, estimate, model))
    if isinstance(answer, Admitted):
        ...  # run the task, then
        budgets.settle(task_id, actual, charged=x_charged, usage=usage)   # or release(task_id)
"""

from fleet.budgets.admission import (
    Admitted,
    Budgets,
    BudgetStoreUnavailable,
    Charge,
    PauseEvent,
    Refused,
    UnknownReservation,
    estimate_cost,
)

__all__ = [
    "Admitted",
    "BudgetStoreUnavailable",
    "Budgets",
    "Charge",
    "PauseEvent",
    "Refused",
    "UnknownReservation",
    "estimate_cost",
]
