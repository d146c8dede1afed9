"""The kill switch page: pause the control loop, freeze an agent, freeze a fleet — each
behind a confirmation step — and ask for their release on the same page (releases are
approval requests another person decides in the approvals inbox)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleet import control
from fleet.identity import Permission
from web.console.render import page
from web.console.session import CsrfChecked, needs
from web.deps import get_runtime

router = APIRouter(prefix="/console/control", include_in_schema=False)

PATH = "/console/control"

# What each lever does, shown on the confirmation step.
LEVERS: dict[str, dict[str, str]] = {
    "pause": {
        "title": "Pause the control loop",
        "effect": "No sweeps, no escalation actions, no work dispatch, no provisioning steps "
        "run until the loop is resumed. Resuming needs another person's approval.",
    },
    "resume": {
        "title": "Ask to resume the control loop",
        "effect": "Opens a HIGH approval request; the loop runs again once another person "
        "approves it.",
    },
    "freeze-agent": {
        "title": "Freeze an agent",
        "effect": "The agent is paused (no work, no sweeps) and its wallet frozen at the "
        "gateway. Releasing it needs another person's approval.",
    },
    "release-agent": {
        "title": "Ask to release an agent",
        "effect": "Opens a HIGH approval request; once approved its wallet is unfrozen and "
        "it is active again.",
    },
    "freeze-fleet": {
        "title": "Freeze a fleet",
        "effect": "Every active agent of the fleet is paused and its wallet frozen. Releasing "
        "the fleet needs another person's approval.",
    },
    "release-fleet": {
        "title": "Ask to release a fleet",
        "effect": "Opens a HIGH approval request; once approved the agents this freeze paused "
        "are active again and their wallets unfrozen.",
    },
}

Text = Annotated[str, Form(max_length=500)]
Name = Annotated[str, Form(max_length=128)]


@router.get("", dependencies=[needs(Permission.MONITORING_READ)])
async def control_page(request: Request, done: str = "", error: str = "") -> HTMLResponse:
    rt = get_runtime(request)
    state = await run_in_threadpool(control.state, rt.control)
    return page(
        request,
        "control.html",
        {"state": state, "done": done[:300], "error": error[:300], "levers": LEVERS},
    )


def _act(rt: Any, lever: str, by: str, target: str, reason: str) -> dict[str, Any]:
    deps = rt.control
    if lever == "pause":
        return control.pause_loop(deps, by, reason)
    if lever == "resume":
        gate = control.request_resume(deps, by, reason)
        return {"status": "awaiting-approval", "request_id": gate.request_id}
    if lever == "freeze-agent":
        return control.freeze_agent(deps, target, by, reason)
    if lever == "release-agent":
        return control.request_agent_release(deps, target, by, reason)
    if lever == "freeze-fleet":
        return control.freeze_fleet(deps, target, by, reason)
    gate = control.request_fleet_release(deps, target, by, reason)
    return {"status": "awaiting-approval", "request_id": gate.request_id}


def _message(lever: str, target: str, out: dict[str, Any]) -> str:
    title = LEVERS[lever]["title"]
    what = f"{title}{' ' + target if target else ''}: {out.get('status')}"
    if out.get("request_id"):
        what += f" (approval request {out['request_id']})"
    return what


@router.post("/{lever}", dependencies=[needs(Permission.CONTROL_OPERATE)])
async def pull_lever(
    request: Request,
    lever: str,
    who: CsrfChecked,
    reason: Text = "",
    target: Name = "",
    confirm: Annotated[str, Form(max_length=8)] = "",
) -> Response:
    if lever not in LEVERS:
        return page(
            request,
            "error.html",
            {"title": "No such lever", "message": f"lever: one of {', '.join(LEVERS)}"},
            status_code=404,
        )
    needs_target = lever not in ("pause", "resume")
    problems = []
    if not reason.strip():
        problems.append("reason: say why (it is audited and shown to approvers)")
    if needs_target and not target.strip():
        problems.append("target: name the agent or fleet")
    if problems or confirm != "yes":
        # The confirmation step: what exactly will happen, nothing done yet.
        return page(
            request,
            "control_confirm.html",
            {
                "lever": lever,
                "info": LEVERS[lever],
                "reason": reason,
                "target": target,
                "needs_target": needs_target,
                "problems": problems,
            },
            status_code=422 if problems else 200,
        )
    rt = get_runtime(request)
    try:
        out = await run_in_threadpool(
            _act, rt, lever, who.principal_id, target.strip(), reason.strip()
        )
    except control.ControlError as exc:
        return page(
            request,
            "control_confirm.html",
            {
                "lever": lever,
                "info": LEVERS[lever],
                "reason": reason,
                "target": target,
                "needs_target": needs_target,
                "problems": [str(exc)],
            },
            status_code=422,
        )
    from urllib.parse import quote

    return RedirectResponse(f"{PATH}?done={quote(_message(lever, target, out))}", status_code=303)
