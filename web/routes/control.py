"""The kill switch over HTTP (fleet/control).

GET  /api/v1/control                         what holds now, and releases awaiting approval
POST /api/v1/control/pause    {reason}       pause the whole control loop (acts at once)
POST /api/v1/control/resume   {reason}       ask to resume it: 202, a HIGH approval request
POST /api/v1/control/agents/{id}/freeze  {reason}    pause the agent, freeze its wallet
POST /api/v1/control/agents/{id}/release {reason}    ask to release it (release_agent, HIGH)
POST /api/v1/control/fleets/{fleet}/freeze  {reason} every active agent of the fleet
POST /api/v1/control/fleets/{fleet}/release {reason} ask to release it (release_fleet, HIGH)

Every change is audited with the signed-in person; releases run once another person
approves them (``/api/v1/approvals``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from fleet import control
from fleet.approvals import Gate
from fleet.identity import Permission, Principal
from web.app_auth import require
from web.deps import RuntimeDep
from web.problems import ProblemError

router = APIRouter(prefix="/api/v1/control", tags=["control"])

Reader = Annotated[Principal, Depends(require(Permission.MONITORING_READ))]
Operator = Annotated[Principal, Depends(require(Permission.CONTROL_OPERATE))]

NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
AgentId = Annotated[str, Path(pattern=NAME)]
FleetName = Annotated[str, Path(pattern=NAME)]


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Not only spaces: the reason is what the audit keeps of why.
    reason: Annotated[str, Field(min_length=1, max_length=500, pattern=r"\S")]


_UNKNOWN: dict[int | str, dict[str, Any]] = {404: {"description": "No such agent or fleet."}}
_RELEASE: dict[int | str, dict[str, Any]] = {
    **_UNKNOWN,
    409: {"description": "It is not frozen."},
}


def _asked(gate: Gate) -> dict[str, Any]:
    return {
        "status": "awaiting-approval" if not gate.may_run else "approved",
        "risk": gate.risk.value,
        "approval_id": gate.request_id,
    }


async def _call(fn: Any, *args: Any) -> Any:
    try:
        return await run_in_threadpool(fn, *args)
    except control.UnknownTarget as exc:
        raise ProblemError(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except control.NotHeld as exc:
        raise ProblemError(status.HTTP_409_CONFLICT, str(exc)) from None
    except control.ControlError as exc:
        raise ProblemError(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


@router.get("", summary="The kill switch: loop pause, frozen fleets and agents, pending releases")
async def control_state(rt: RuntimeDep, _: Reader) -> Any:
    return await run_in_threadpool(control.state, rt.control)


@router.post("/pause", summary="Pause the whole control loop")
async def pause(body: Reason, rt: RuntimeDep, who: Operator) -> Any:
    return await _call(control.pause_loop, rt.control, who.principal_id, body.reason)


@router.post(
    "/resume",
    status_code=status.HTTP_202_ACCEPTED,
    responses={409: {"description": "The loop is not paused."}},
    summary="Ask to resume the loop",
)
async def resume(body: Reason, rt: RuntimeDep, who: Operator) -> Any:
    gate = await _call(control.request_resume, rt.control, who.principal_id, body.reason)
    return _asked(gate)


@router.post(
    "/agents/{agent_id}/freeze",
    responses=_UNKNOWN,
    summary="Pause one agent and freeze its wallet",
)
async def freeze_agent(agent_id: AgentId, body: Reason, rt: RuntimeDep, who: Operator) -> Any:
    return await _call(control.freeze_agent, rt.control, agent_id, who.principal_id, body.reason)


@router.post(
    "/agents/{agent_id}/release",
    status_code=status.HTTP_202_ACCEPTED,
    responses=_UNKNOWN,
    summary="Ask to release a frozen agent",
)
async def release_agent(agent_id: AgentId, body: Reason, rt: RuntimeDep, who: Operator) -> Any:
    return await _call(
        control.request_agent_release, rt.control, agent_id, who.principal_id, body.reason
    )


@router.post(
    "/fleets/{fleet}/freeze",
    responses=_UNKNOWN,
    summary="Pause every active agent of a fleet",
)
async def freeze_fleet(fleet: FleetName, body: Reason, rt: RuntimeDep, who: Operator) -> Any:
    return await _call(control.freeze_fleet, rt.control, fleet, who.principal_id, body.reason)


@router.post(
    "/fleets/{fleet}/release",
    status_code=status.HTTP_202_ACCEPTED,
    responses=_RELEASE,
    summary="Ask to release a frozen fleet",
)
async def release_fleet(fleet: FleetName, body: Reason, rt: RuntimeDep, who: Operator) -> Any:
    gate = await _call(
        control.request_fleet_release, rt.control, fleet, who.principal_id, body.reason
    )
    return {"fleet": fleet, **_asked(gate)}
