"""Budgets over HTTP: the state of a fleet's budgets; asking to resume its spending or to
raise a budget. Both asks are HIGH actions: the answer is 202 with the pending approval
request, and nothing changes until an approver other than the asker approves it
(``/api/v1/approvals``); the approved task then does it, once."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from fleet.approvals import Gate
from fleet.budgets import control, ledger
from fleet.identity import Permission, Principal
from tasks.budgets import control_deps
from tasks.budgets import raise_limit as raise_task
from tasks.budgets import resume as resume_task
from web.app_auth import require
from web.deps import RuntimeDep
from web.problems import ProblemError

router = APIRouter(prefix="/api/v1/budgets", tags=["budgets"])

Reader = Annotated[Principal, Depends(require(Permission.MONITORING_READ))]
Requester = Annotated[Principal, Depends(require(Permission.APPROVALS_REQUEST))]
Operator = Annotated[Principal, Depends(require(Permission.CONTROL_OPERATE))]

Name = Annotated[
    str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9*][A-Za-z0-9._*-]*$")
]


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fleet: Name
    reason: Annotated[str, Field(max_length=500)] = ""


class PauseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fleet: Annotated[
        str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    ]
    # Not only spaces: the reason is what the audit keeps of why.
    reason: Annotated[str, Field(min_length=1, max_length=500, pattern=r"\S")]


class RaiseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    budget: Literal["per_task", "agent_hour", "fleet_day", "pool"]
    # An agent (agent_hour), a fleet (per_task, fleet_day), a pool's name, or "*" for all.
    subject: Name
    # A positive decimal, at most 6 places, as text (exact): "3000.00", "0.5".
    limit: Annotated[str, Field(pattern=r"^([1-9][0-9]{0,11}(\.[0-9]{1,6})?|0\.[0-9]{0,5}[1-9])$")]
    reason: Annotated[str, Field(max_length=500)] = ""


def _asked(gate: Gate) -> dict[str, Any]:
    return {
        "status": "awaiting-approval" if not gate.may_run else "approved",
        "risk": gate.risk.value,
        "approval_id": gate.request_id,
    }


@router.get("", summary="A fleet's budgets: today's spend and holds, limits, pause")
def budget_state(rt: RuntimeDep, _: Reader, fleet: Annotated[str | None, Query()] = None) -> Any:
    name = fleet or rt.settings.fleet_name
    try:
        state = rt.budgets.state(name)
    except Exception as exc:  # noqa: BLE001 - the store away is an answer, not a crash
        raise ProblemError(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the budget store did not answer ({type(exc).__name__}): admissions are refused",
        ) from None
    return {
        **state,
        "pauses": control.pauses(rt.sessions),
        "raised": control.raised_limits(rt.sessions),
        "ledger_pending": ledger.pending(rt.redis),
    }


@router.post("/pause", summary="Pause a fleet's spending now (resuming is HIGH)")
async def pause(body: PauseRequest, rt: RuntimeDep, who: Operator) -> Any:
    try:
        return await run_in_threadpool(
            control.pause_spending, control_deps(rt), body.fleet, who.principal_id, body.reason
        )
    except control.BudgetRequestError as exc:
        raise ProblemError(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


@router.post("/resume", status_code=status.HTTP_202_ACCEPTED, summary="Ask to resume spending")
async def ask_resume(body: ResumeRequest, rt: RuntimeDep, who: Requester) -> Any:
    def ask() -> Gate:
        return control.request_resume(
            control_deps(rt), body.fleet, who.principal_id, reason=body.reason,
            task=resume_task.name,
        )  # fmt: skip

    return {"fleet": body.fleet, **_asked(await run_in_threadpool(ask))}


@router.post("/raise", status_code=status.HTTP_202_ACCEPTED, summary="Ask to raise a budget")
async def ask_raise(body: RaiseRequest, rt: RuntimeDep, who: Requester) -> Any:
    fleet = body.subject if body.budget in ("fleet_day", "per_task") else None

    def ask() -> Gate:
        return control.request_raise(
            control_deps(rt), body.budget, body.subject, Decimal(body.limit), who.principal_id,
            reason=body.reason, task=raise_task.name, fleet=None if fleet == "*" else fleet,
        )  # fmt: skip

    try:
        gate = await run_in_threadpool(ask)
    except control.BudgetRequestError as exc:
        raise ProblemError(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return {"budget": body.budget, "subject": body.subject, "limit": body.limit,
            **_asked(gate)}  # fmt: skip
