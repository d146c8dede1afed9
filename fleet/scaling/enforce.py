"""Switching a segment's autoscaler to enforce: an approval-gated action (``autoscale_enforce``).

A segment starts in observe mode: the autoscaler decides and logs, and acts on
nothing. Letting it provision and retire on its own is HIGH in the risk matrix:
:func:`request_enforce` opens the request; once approved, the task named here runs
:func:`apply_enforce`, which checks the approval, sets the mode and then marks the
approval used (idempotent: a redelivered message finds the mode set). Back to observe
(:func:`set_observe`) takes effect at once: acting on less needs no approval.
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from fleet.approvals.gate import approvers, run_approved
from fleet.approvals.service import Approvals, Gate
from fleet.audit.events import ApprovalState, Article, build_event
from fleet.scaling.autoscaler import ScalingError, segments, state_of
from fleet.scaling.models import Mode, SegmentScaling
from fleet.storage.db import write_session

ACTION = "autoscale_enforce"
TASK = "provisioning.scaling.enforce"


def fleet_of(sessions: sessionmaker[Session], segment: str) -> str:
    with sessions() as s:
        state = s.get(SegmentScaling, segment)
        if state is not None:
            return state.fleet
    known = dict(segments(sessions))
    if segment not in known:
        raise ScalingError(f"no segment {segment!r}: no agent has that id prefix")
    return known[segment]


def request_enforce(
    approvals: Approvals,
    sessions: sessionmaker[Session],
    segment: str,
    requested_by: str,
    *,
    reason: str,
) -> Gate:
    """Ask for enforce mode. HIGH by default: the gate holds until approved and the task
    then sets it; should the matrix make it LOW or MEDIUM, it is set here at once."""
    fleet = fleet_of(sessions, segment)
    gate = approvals.request(
        ACTION,
        segment,
        requested_by,
        fleet=fleet,
        reason=reason,
        details={"segment": segment, "mode": Mode.ENFORCE},
        task=TASK,
        task_kwargs={"segment": segment, "requested_by": requested_by, "reason": reason},
    )
    if gate.may_run:
        _set_mode(sessions, approvals, segment, Mode.ENFORCE, requested_by, reason, None)
    return gate


def _set_mode(
    sessions: sessionmaker[Session],
    approvals: Approvals,
    segment: str,
    mode: Mode,
    by: str,
    reason: str,
    approval_id: str | None,
) -> str:
    fleet = fleet_of(sessions, segment)
    with write_session(sessions) as s:
        state = state_of(s, segment, fleet)
        state.mode = mode
        state.mode_changed_by = by
        state.mode_reason = reason
        state.mode_approval_id = approval_id
        state.mode_changed_at = approvals.clock.now()
    return fleet


def apply_enforce(
    approvals: Approvals,
    sessions: sessionmaker[Session],
    *,
    request_id: str,
    segment: str,
    requested_by: str,
    reason: str,
) -> bool:
    """Enforce mode under an approval; False if a concurrent delivery finished first."""
    fleet, view = run_approved(
        approvals,
        action=ACTION,
        subject=segment,
        approval_id=request_id,
        work=lambda: _set_mode(
            sessions, approvals, segment, Mode.ENFORCE, requested_by, reason, request_id
        ),
    )
    if view is None:
        return False
    approvals.emit_audit(
        [
            build_event(
                actor=approvals.actor,
                action=ACTION,
                subject=segment,
                fleet=fleet,
                details={"request_id": request_id, "approvers": list(approvers(view))},
                article=Article.HUMAN_OVERSIGHT,
                approval=ApprovalState.APPROVED,
                approval_id=request_id,
                clock=approvals.clock,
            )
        ]
    )
    return True


def set_observe(
    approvals: Approvals, sessions: sessionmaker[Session], segment: str, by: str, reason: str
) -> None:
    fleet = _set_mode(sessions, approvals, segment, Mode.OBSERVE, by, reason, None)
    approvals.emit_audit(
        [
            build_event(
                actor=by,
                action="autoscale_observe",
                subject=segment,
                fleet=fleet,
                details={"reason": reason},
                article=Article.HUMAN_OVERSIGHT,
                approval=ApprovalState.NONE,
                clock=approvals.clock,
            )
        ]
    )
