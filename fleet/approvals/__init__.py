"""Human oversight (Art. 14): risk-based approval of the actions the system takes.

Before an action, ask the gate::

    from fleet.approvals import Approvals

    approvals = Approvals(sessions, settings.policy.approvals, clock=clock)
    gate = approvals.request(
        "retire_agent", agent_id, requested_by="fleet-commander/scaling",
        fleet="demo", reason="scale-down", amount=None,             # amount: Decimal moved, if any
        task="provisioning.retire_agent", task_kwargs={"agent_id": agent_id},
    )
    if gate.may_run:
        ...  # LOW (audit only) or MEDIUM (runs; joins the post-hoc review queue, due in 24 h)
    else:
        ...  # HIGH or CRITICAL: nothing runs now; gate.request_id is pending

When the quorum approves (one approver for HIGH, two distinct ones for
CRITICAL, from ``approvals.quorum``; never the requester), ``task`` is sent
with ``task_kwargs`` and ``approval_id``. That task checks and claims the
approval before acting::

    # raises NotApproved:
    approvals.require_approved(approval_id, action="retire_agent", subject=agent_id)
    ... do the (idempotent) work ...
    # exactly once; or consume() first for work that is not idempotent:
    approvals.consume(approval_id)

A request not approved within ``request_expiry_s`` is denied. Every request,
vote, grant, denial, expiry, execution and review is an audit entry.
Releasing a frozen agent goes through the same gate (:mod:`fleet.approvals.release`).
Messages to counterparties carry an AI disclosure (:mod:`fleet.approvals.disclosure`, Art. 13).
"""

from fleet.approvals.disclosure import has_ai_disclosure, with_ai_disclosure
from fleet.approvals.models import RequestStatus, Verdict
from fleet.approvals.risk import approvals_required, classify
from fleet.approvals.service import (
    ApprovalError,
    Approvals,
    DuplicateVote,
    Gate,
    NotAnApprover,
    NotApproved,
    NotPending,
    RequestExpired,
    RequestView,
    SelfApproval,
    UnknownRequest,
)

__all__ = [
    "ApprovalError",
    "Approvals",
    "DuplicateVote",
    "Gate",
    "NotAnApprover",
    "NotApproved",
    "NotPending",
    "RequestExpired",
    "RequestStatus",
    "RequestView",
    "SelfApproval",
    "UnknownRequest",
    "Verdict",
    "approvals_required",
    "classify",
    "has_ai_disclosure",
    "with_ai_disclosure",
]
