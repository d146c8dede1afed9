"""Risk classification: the policy matrix first, then what the request itself reveals.

The matrix names each action's risk. A request can only raise it, never
lower it: money above ``high_money_threshold``, or personal data, make it at
least HIGH; an irreversible effect makes it CRITICAL; a MEDIUM change moving
``medium_money_ceiling`` or more is HIGH (MEDIUM covers changes *under* that
amount, HIGH those over the higher threshold; what falls between is treated
as the safer of the two); a LOW (read-only) action that moves money is at
least MEDIUM.
"""

from __future__ import annotations

from decimal import Decimal

from config.policy import ApprovalPolicy, Risk

ORDER = (Risk.LOW, Risk.MEDIUM, Risk.HIGH, Risk.CRITICAL)


def at_least(risk: Risk, floor: Risk) -> Risk:
    return risk if ORDER.index(risk) >= ORDER.index(floor) else floor


def classify(
    policy: ApprovalPolicy,
    action: str,
    *,
    amount: Decimal | None = None,
    pii: bool = False,
    irreversible: bool = False,
) -> Risk:
    risk = policy.matrix.get(action, policy.default_risk)
    if irreversible:
        risk = Risk.CRITICAL
    if pii:
        risk = at_least(risk, Risk.HIGH)
    if amount is not None:
        amount = abs(amount)
        if amount > policy.high_money_threshold:
            risk = at_least(risk, Risk.HIGH)
        elif amount > 0:
            risk = at_least(risk, Risk.MEDIUM)
            if risk is Risk.MEDIUM and amount >= policy.medium_money_ceiling:
                risk = Risk.HIGH
    return risk


def approvals_required(policy: ApprovalPolicy, risk: Risk) -> int:
    """Distinct approvers needed before the action runs (0: it runs at once)."""
    if risk in (Risk.LOW, Risk.MEDIUM):
        return 0
    default = 1 if risk is Risk.HIGH else 2
    return max(1, policy.quorum.get(risk, default))
