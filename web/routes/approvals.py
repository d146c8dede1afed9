"""Approvals over HTTP: list requests, approve, reject, review, ask to release a frozen agent.

The person deciding is the authenticated principal, never a name in the body:
its id is what the audit log records and what the four-eyes rules compare
(nobody approves their own request, one credential votes once). A body that
still names someone else (``approver``, ``reviewer``, ``requested_by``) is
refused.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field

from fleet.approvals import (
    ApprovalError,
    DuplicateVote,
    NotAnApprover,
    NotPending,
    RequestExpired,
    RequestStatus,
    RequestView,
    SelfApproval,
    UnknownRequest,
)
from fleet.approvals.gate import dispatch_approved
from fleet.approvals.release import request_release as open_request
from fleet.approvals.service import action_digest, same_person
from fleet.identity import Permission, Principal
from fleet.runtime import Runtime
from web.app_auth import require
from web.deps import RuntimeDep
from web.problems import ProblemError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/approvals", tags=["approvals"])

Reader = Annotated[Principal, Depends(require(Permission.APPROVALS_READ))]
Decider = Annotated[Principal, Depends(require(Permission.APPROVALS_DECIDE))]
Reviewer = Annotated[Principal, Depends(require(Permission.APPROVALS_REVIEW))]
Requester = Annotated[Principal, Depends(require(Permission.APPROVALS_REQUEST))]

_DECISION_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such request."},
    403: {"description": "Lacks the permission, raised the request, or not a configured approver."},
    409: {
        "description": "Not pending (decided, expired, executed), already voted, or the "
        "action_digest sent is not this request's."
    },
}

_STATUS_FOR: list[tuple[type[ApprovalError], int]] = [
    (UnknownRequest, status.HTTP_404_NOT_FOUND),
    (SelfApproval, status.HTTP_403_FORBIDDEN),
    (NotAnApprover, status.HTTP_403_FORBIDDEN),
    (DuplicateVote, status.HTTP_409_CONFLICT),
    (NotPending, status.HTTP_409_CONFLICT),
    (RequestExpired, status.HTTP_409_CONFLICT),
]


def _http_error(exc: ApprovalError) -> ProblemError:
    code = next((c for cls, c in _STATUS_FOR if isinstance(exc, cls)), status.HTTP_409_CONFLICT)
    return ProblemError(code, str(exc), error=type(exc).__name__)


def _refuse_other_digest(rt: Runtime, request_id: str, decision: Decision, verdict: str) -> None:
    if decision.action_digest is None:
        return
    try:
        view = rt.approvals.get(request_id)
    except ApprovalError as exc:
        raise _http_error(exc) from None
    if action_digest(view, verdict) != decision.action_digest:
        raise ProblemError(
            status.HTTP_409_CONFLICT,
            f"request {request_id} is not the action whose digest was sent",
            error="DigestMismatch",
        )


def _refuse_other_actor(named: str | None, principal: Principal, field: str) -> None:
    """Older clients name the actor in the body: accepted only if it is the caller."""
    if named is not None and not (
        same_person(named, principal.principal_id) or same_person(named, principal.name)
    ):
        raise ProblemError(
            403,
            f"{field} {named!r} is not the authenticated principal {principal.principal_id}; "
            "decisions are made as the caller",
            error="ActorMismatch",
        )


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str = Field(default="", max_length=2000)
    # The request's action_digests[verdict] as the caller saw it: refused (409) if the
    # request says anything else, so nobody approves an action they were not shown.
    action_digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # Deprecated: the caller decides. If given it must name the caller.
    approver: str | None = Field(default=None, min_length=1, max_length=128)


class Review(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str = Field(default="", max_length=2000)
    reviewer: str | None = Field(default=None, min_length=1, max_length=128)


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=1, max_length=2000)
    fleet: str | None = Field(default=None, max_length=128)
    requested_by: str | None = Field(default=None, min_length=1, max_length=128)


def _dispatch(rt: Runtime, view: RequestView) -> None:
    if view.status is RequestStatus.APPROVED and view.task:
        try:
            dispatch_approved(rt.approvals, rt.send)
        except Exception as exc:  # noqa: BLE001 - the sweep sends it later
            log.warning("approved %s; its task waits for the next sweep: %s", view.request_id, exc)


@router.get("")
def list_requests(
    rt: RuntimeDep,
    _: Reader,
    state: RequestStatus | None = RequestStatus.PENDING,
    review: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Pending requests by default; ``?review=true`` for the post-hoc review queue."""
    return [
        v.to_dict()
        for v in rt.approvals.list_requests(status=state, review_queue=review, limit=limit)
    ]


@router.get("/{request_id}", responses={404: {"description": "No such request."}})
def get_request(rt: RuntimeDep, _: Reader, request_id: str) -> dict[str, Any]:
    try:
        return dict(rt.approvals.get(request_id).to_dict())
    except ApprovalError as exc:
        raise _http_error(exc) from None


@router.post("/{request_id}/approve", responses=_DECISION_ERRORS)
def approve(
    rt: RuntimeDep, principal: Decider, request_id: str, decision: Decision
) -> dict[str, Any]:
    """Vote for, as the caller: HIGH needs one approver, CRITICAL two distinct principals."""
    _refuse_other_actor(decision.approver, principal, "approver")
    _refuse_other_digest(rt, request_id, decision, "approve")
    try:
        view = rt.approvals.approve(request_id, "", decision.comment, principal=principal)
    except ApprovalError as exc:
        raise _http_error(exc) from None
    _dispatch(rt, view)
    return dict(view.to_dict())


@router.post("/{request_id}/reject", responses=_DECISION_ERRORS)
def reject(
    rt: RuntimeDep, principal: Decider, request_id: str, decision: Decision
) -> dict[str, Any]:
    _refuse_other_actor(decision.approver, principal, "approver")
    _refuse_other_digest(rt, request_id, decision, "reject")
    try:
        view = rt.approvals.reject(request_id, "", decision.comment, principal=principal)
    except ApprovalError as exc:
        raise _http_error(exc) from None
    return dict(view.to_dict())


@router.post("/{request_id}/review", responses=_DECISION_ERRORS)
def review(rt: RuntimeDep, principal: Reviewer, request_id: str, body: Review) -> dict[str, Any]:
    _refuse_other_actor(body.reviewer, principal, "reviewer")
    try:
        return dict(rt.approvals.review(request_id, "", body.note, principal=principal).to_dict())
    except ApprovalError as exc:
        raise _http_error(exc) from None


# Its own collection: under /approvals it would share a path with GET /approvals/{request_id}.
releases = APIRouter(prefix="/api/v1/release-requests", tags=["approvals"])


@releases.post("", status_code=status.HTTP_202_ACCEPTED)
def request_release(rt: RuntimeDep, principal: Requester, body: ReleaseRequest) -> dict[str, Any]:
    """Ask, as the caller, to release a frozen agent: it runs once someone else approves."""
    _refuse_other_actor(body.requested_by, principal, "requested_by")
    gate = open_request(
        rt.approvals, body.agent_id, principal.principal_id, reason=body.reason, fleet=body.fleet
    )
    return {
        "risk": gate.risk.value,
        "may_run": gate.may_run,
        "request": gate.request.to_dict() if gate.request else None,
    }
