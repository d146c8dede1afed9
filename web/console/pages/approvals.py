"""The approvals inbox: pending requests with exactly what they would do and their risk
class, approve or reject as the signed-in person (a CRITICAL request shows its quorum and
who has voted), and the post-hoc review queue of MEDIUM actions."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleet.approvals import ApprovalError, RequestView
from fleet.approvals.models import RequestStatus
from fleet.approvals.service import action_digest, same_person
from fleet.identity import Permission, Principal
from web.console.render import page
from web.console.session import CsrfChecked, needs
from web.deps import get_runtime

router = APIRouter(prefix="/console/approvals", include_in_schema=False)

PATH = "/console/approvals"
LIMIT = 200


def _row(view: RequestView, who: Principal) -> dict[str, Any]:
    d = view.to_dict()
    d["own"] = same_person(who.principal_id, view.requested_by)
    d["voted"] = any(same_person(who.principal_id, v.approver) for v in view.votes)
    d["would_run"] = view.task
    d["would_do"] = {k: v for k, v in view.task_kwargs.items()} or view.details
    return d


@router.get("", dependencies=[needs(Permission.APPROVALS_READ)])
async def inbox(request: Request, done: str = "", error: str = "") -> HTMLResponse:
    rt = get_runtime(request)
    who: Principal = request.state.console_principal

    def load() -> tuple[list[RequestView], list[RequestView], list[RequestView]]:
        return (
            rt.approvals.list_requests(status=RequestStatus.PENDING, limit=LIMIT),
            rt.approvals.list_requests(review_queue=True, limit=LIMIT),
            rt.approvals.list_requests(limit=20),
        )

    pending, review, recent = await run_in_threadpool(load)
    return page(
        request,
        "approvals.html",
        {
            "pending": [_row(v, who) for v in pending],
            "review": [_row(v, who) for v in review],
            "recent": [v.to_dict() for v in recent if v.status is not RequestStatus.PENDING],
            "done": done[:300],
            "error": error[:300],
        },
    )


def _back(done: str = "", error: str = "") -> Response:
    query = f"done={quote(done)}" if done else f"error={quote(error)}"
    return RedirectResponse(f"{PATH}?{query}", status_code=303)


@router.post("/{request_id}/review", dependencies=[needs(Permission.APPROVALS_REVIEW)])
async def review(
    request: Request,
    request_id: str,
    who: CsrfChecked,
    note: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    rt = get_runtime(request)
    try:
        view = await run_in_threadpool(
            lambda: rt.approvals.review(request_id, who.principal_id, note, principal=who)
        )
    except ApprovalError as exc:
        return _back(error=f"{type(exc).__name__}: {exc}")
    return _back(done=f"reviewed {view.action} on {view.subject}")


@router.post("/{request_id}/{verdict}", dependencies=[needs(Permission.APPROVALS_DECIDE)])
async def decide(
    request: Request,
    request_id: str,
    verdict: str,
    who: CsrfChecked,
    digest: Annotated[str, Form(max_length=64)] = "",
    comment: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    if verdict not in ("approve", "reject"):
        return _back(error="verdict: approve or reject")
    rt = get_runtime(request)

    def vote() -> RequestView:
        view = rt.approvals.get(request_id)
        # The vote decides what the person saw: a request changed since is refused.
        if digest != action_digest(view, verdict):
            raise ApprovalError(f"request {request_id} is not the one shown: reload and decide")
        cast_vote = rt.approvals.approve if verdict == "approve" else rt.approvals.reject
        return cast_vote(request_id, who.principal_id, comment, principal=who)

    try:
        view = await run_in_threadpool(vote)
    except ApprovalError as exc:
        return _back(error=f"{type(exc).__name__}: {exc}")
    return _back(done=f"{verdict}d {view.action} on {view.subject}: now {view.status.value}")
