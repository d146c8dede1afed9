"""The autoscaler over HTTP: its decisions (every one, hold included, with its inputs),
each segment's mode and cooldown, and switching a segment's mode.

Enforce (the autoscaler provisions and retires on its own) is ``autoscale_enforce``,
HIGH: the answer is 202 with the pending approval request, and the mode changes once
another person approves it (``/api/v1/approvals``). Observe takes effect at once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fleet.identity import Permission, Principal
from fleet.scaling import autoscaler, enforce
from web.app_auth import require
from web.deps import RuntimeDep
from web.problems import ProblemError

router = APIRouter(prefix="/api/v1/scaling", tags=["scaling"])

Reader = Annotated[Principal, Depends(require(Permission.MONITORING_READ))]
Requester = Annotated[Principal, Depends(require(Permission.APPROVALS_REQUEST))]

SEGMENT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Segment = Annotated[str, Field(min_length=1, max_length=64, pattern=SEGMENT)]


class ModeChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["observe", "enforce"]
    reason: Annotated[str, Field(min_length=1, max_length=500, pattern=r"\S")]


@router.get("/decisions", summary="The autoscaler's decisions, newest first, with their inputs")
def list_decisions(
    rt: RuntimeDep,
    _: Reader,
    segment: Annotated[str | None, Query(max_length=64, pattern=SEGMENT)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> Any:
    return {"decisions": autoscaler.decisions(rt.sessions, segment=segment, limit=limit)}


@router.get("/segments", summary="Each segment's mode, last action and cooldown")
def list_segments(rt: RuntimeDep, _: Reader) -> Any:
    return {"segments": autoscaler.segment_views(rt.sessions)}


@router.post(
    "/segments/{segment}/mode",
    summary="Observe (at once) or ask to enforce (HIGH: 202 with the approval request)",
    responses={
        200: {"description": "observe set"},
        202: {"description": "enforce asked"},
        404: {"description": "No such segment."},
    },
)
async def change_mode(
    segment: Annotated[str, Path(max_length=64, pattern=SEGMENT)],
    body: ModeChange,
    rt: RuntimeDep,
    who: Requester,
) -> Any:
    def change() -> dict[str, Any]:
        if body.mode == "observe":
            enforce.set_observe(rt.approvals, rt.sessions, segment, who.principal_id, body.reason)
            return {"segment": segment, "mode": "observe"}
        gate = enforce.request_enforce(
            rt.approvals, rt.sessions, segment, who.principal_id, reason=body.reason
        )
        return {
            "segment": segment,
            "mode": "enforce" if gate.may_run else "observe",
            "requested": "enforce",
            "status": "awaiting-approval" if not gate.may_run else "approved",
            "risk": gate.risk.value,
            "approval_id": gate.request_id,
        }

    try:
        answer = await run_in_threadpool(change)
    except autoscaler.ScalingError as exc:
        raise ProblemError(status.HTTP_404_NOT_FOUND, str(exc)) from None
    code = status.HTTP_202_ACCEPTED if body.mode == "enforce" else status.HTTP_200_OK
    return JSONResponse(answer, status_code=code)
