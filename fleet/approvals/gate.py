"""The approval gate as every gated action uses it: request → resend with the approval id → consume.

The first run of an action asks (:func:`clear`); HIGH and CRITICAL requests
hold it, and once the quorum approves, :func:`dispatch_approved` sends the
named task again with ``approval_id``. That second run claims the approval
before acting (:func:`clear` again), or, for idempotent work that must finish
once started, checks it, does the work and claims it after
(:func:`run_approved`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fleet.approvals.service import Approvals, Gate, NotApproved, RequestView
from fleet.audit.events import ApprovalState

T = TypeVar("T")

Message = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Cleared:
    """The action may run now."""

    approval: ApprovalState
    request_id: str | None
    approvers: tuple[str, ...] = ()
    gate: Gate | None = None  # the answer when asked; None when an approval was claimed


@dataclass(frozen=True)
class Held:
    """The action waits for a human; ``request_id`` is the pending request."""

    request_id: str | None


def approvers(view: RequestView) -> tuple[str, ...]:
    return tuple(v.approver for v in view.votes if v.verdict == "approve")


def clear(
    approvals: Approvals,
    *,
    action: str,
    subject: str,
    approval_id: str | None,
    ask: Callable[[], Gate],
) -> Cleared | Held:
    """Run once approved: with ``approval_id`` claim it (NotApproved if it is not
    this action's, or not approved, or already used); without, ``ask`` for one."""
    if approval_id is not None:
        view = approvals.consume(approval_id, action=action, subject=subject)
        return Cleared(ApprovalState.APPROVED, approval_id, approvers(view))
    gate = ask()
    if not gate.may_run:
        return Held(gate.request_id)
    return Cleared(gate.approval, gate.request_id, gate=gate)


def run_approved(
    approvals: Approvals,
    *,
    action: str,
    subject: str,
    approval_id: str | None,
    work: Callable[[], T],
    finished: Callable[[T], bool] = lambda _: True,
) -> tuple[T, RequestView | None]:
    """Idempotent work under an approval: checked before, claimed once ``finished``.

    Returns the work's result and the claimed request, or None when the work
    did not finish or a concurrent delivery claimed it first. Raises
    NotApproved before doing anything when the approval does not cover it.
    """
    if approval_id is None:
        raise NotApproved(f"{action} on {subject} needs an approval")
    approvals.require_approved(approval_id, action=action, subject=subject)
    result = work()
    if not finished(result):
        return result, None
    try:
        return result, approvals.consume(approval_id, action=action, subject=subject)
    except NotApproved:
        return result, None


def dispatch_approved(approvals: Approvals, send: Callable[[Sequence[Message]], None]) -> list[str]:
    """Send the task of each approved request not sent yet, with ``approval_id``; returns their ids.

    Sending before marking means a crash in between sends it again; the task
    claims its approval before acting, so the second copy does nothing.
    """
    sent = []
    for view in approvals.awaiting_dispatch():
        assert view.task is not None
        send([(view.task, {**view.task_kwargs, "approval_id": view.request_id})])
        approvals.mark_dispatched(view.request_id)
        sent.append(view.request_id)
    return sent
