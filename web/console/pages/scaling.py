"""Scaling: each segment's autoscaler mode and cooldown, and its latest decisions
(holds included) with the inputs they were made from; switching a segment to enforce
asks for an approval (HIGH), back to observe acts at once."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleet.identity import Permission
from fleet.scaling import autoscaler, enforce
from web.console.render import page
from web.console.session import CsrfChecked, needs
from web.deps import get_runtime

router = APIRouter(prefix="/console/scaling", include_in_schema=False)

PATH = "/console/scaling"
SEGMENT = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


def _state(rt: Any, segment: str | None, limit: int) -> dict[str, Any]:
    return {
        "segments": autoscaler.segment_views(rt.sessions),
        "decisions": autoscaler.decisions(rt.sessions, segment=segment, limit=limit),
        "segment": segment or "",
    }


@router.get("", dependencies=[needs(Permission.MONITORING_READ)])
async def scaling_page(
    request: Request,
    segment: Annotated[str | None, Query(max_length=128, pattern=SEGMENT)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    done: str = "",
    error: str = "",
) -> HTMLResponse:
    rt = get_runtime(request)
    state = await run_in_threadpool(_state, rt, segment, limit)
    return page(request, "scaling.html", {**state, "done": done[:300], "error": error[:300]})


@router.post("/mode", dependencies=[needs(Permission.APPROVALS_REQUEST)])
async def change_mode(
    request: Request,
    who: CsrfChecked,
    segment: Annotated[str, Form(min_length=1, max_length=128, pattern=SEGMENT)],
    mode: Annotated[Literal["observe", "enforce"], Form()],
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    rt = get_runtime(request)

    def change() -> str:
        if mode == "observe":
            enforce.set_observe(rt.approvals, rt.sessions, segment, who.principal_id, reason)
            return f"{segment} observes: the autoscaler decides and logs, and acts on nothing"
        gate = enforce.request_enforce(
            rt.approvals, rt.sessions, segment, who.principal_id, reason=reason
        )
        if gate.may_run:
            return f"{segment} enforces: the autoscaler acts on its decisions"
        return f"enforce {segment}: approval request {gate.request_id} ({gate.risk.value})"

    try:
        message = await run_in_threadpool(change)
    except autoscaler.ScalingError as exc:
        return RedirectResponse(f"{PATH}?error={quote(str(exc))}", 303)
    return RedirectResponse(f"{PATH}?done={quote(message)}", 303)
