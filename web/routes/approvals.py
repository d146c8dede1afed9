"""Approvals over HTTP: list requests, approve, reject, review, ask to release a frozen agent.

The caller names the person deciding (``approver``); it is what the audit log
records and what the four-eyes rules compare (nobody approves their own
request, nobody votes twice).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field

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
from fleet.runtime import Runtime
from web.app_auth import require_token
from web.deps import RuntimeDep

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/api/v1/approvals", tags=["approvals"], dependencies=[Depends(require_token)]
)

_STATUS_FOR: list[tuple[type[ApprovalError], int]] = [
    (UnknownRequest, status.HTTP_404_NOT_FOUND),
    (SelfApproval, status.HTTP_403_FORBIDDEN),
    (NotAnApprover, status.HTTP_403_FORBIDDEN),
    (DuplicateVote, status.HTTP_409_CONFLICT),
    (NotPending, status.HTTP_409_CONFLICT),
    (RequestExpired, status.HTTP_409_CONFLICT),
]


def _http_error(exc: ApprovalError) -> HTTPException:
    code = next((c for cls, c in _STATUS_FOR if isinstance(exc, cls)), status.HTTP_409_CONFLICT)
    return HTTPException(code, {"error": type(exc).__name__, "message": str(exc)})


class Decision(BaseModel):
    approver: str = Field(min_length=1, max_length=128)
    comment: str = Field(default="", max_length=2000)


class Review(BaseModel):
    reviewer: str = Field(min_length=1, max_length=128)
    note: str = Field(default="", max_length=2000)


class ReleaseRequest(BaseModel):
    agent_id: str = Field(min_length=1, max_length=128)
    requested_by: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=1, max_length=2000)
    fleet: str | None = None


def _dispatch(rt: Runtime, view: RequestView) -> None:
    if view.status is RequestStatus.APPROVED and view.task:
        try:
            dispatch_approved(rt.approvals, rt.send)
        except Exception as exc:  # noqa: BLE001 - the sweep sends it later
            log.warning("approved %s; its task waits for the next sweep: %s", view.request_id, exc)


@router.get("")
def list_requests(
    rt: RuntimeDep,
    state: RequestStatus | None = RequestStatus.PENDING,
    review: bool = False,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Pending requests by default; ``?review=true`` for the post-hoc review queue."""
    return [
        v.to_dict()
        for v in rt.approvals.list_requests(
            status=state, review_queue=review, limit=min(limit, 1000)
        )
    ]


@router.get("/{request_id}")
def get_request(rt: RuntimeDep, request_id: str) -> dict[str, Any]:
    try:
        return dict(rt.approvals.get(request_id).to_dict())
    except ApprovalError as exc:
        raise _http_error(exc) from None


@router.post("/{request_id}/approve")
def approve(rt: RuntimeDep, request_id: str, decision: Decision) -> dict[str, Any]:
    try:
        view = rt.approvals.approve(request_id, decision.approver, decision.comment)
    except ApprovalError as exc:
        raise _http_error(exc) from None
    _dispatch(rt, view)
    return dict(view.to_dict())


@router.post("/{request_id}/reject")
def reject(rt: RuntimeDep, request_id: str, decision: Decision) -> dict[str, Any]:
    try:
        return dict(rt.approvals.reject(request_id, decision.approver, decision.comment).to_dict())
    except ApprovalError as exc:
        raise _http_error(exc) from None


@router.post("/{request_id}/review")
def review(rt: RuntimeDep, request_id: str, body: Review) -> dict[str, Any]:
    try:
        return dict(rt.approvals.review(request_id, body.reviewer, body.note).to_dict())
    except ApprovalError as exc:
        raise _http_error(exc) from None


@router.post("/release", status_code=status.HTTP_202_ACCEPTED)
def request_release(rt: RuntimeDep, body: ReleaseRequest) -> dict[str, Any]:
    """Ask to release a frozen agent: it runs once someone else approves."""
    gate = open_request(
        rt.approvals, body.agent_id, body.requested_by, reason=body.reason, fleet=body.fleet
    )
    return {
        "risk": gate.risk.value,
        "may_run": gate.may_run,
        "request": gate.request.to_dict() if gate.request else None,
    }
