"""Money: spend against the per-task, agent-hour and fleet-day budgets, the model mix, the
ten most expensive tasks, balances and burn; pausing a fleet's spending at once and asking
to resume it (HIGH: another person approves); the weekly FinOps review (fleet/finops) on a
page of its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Numeric, cast, func, select
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleet.budgets import control as budget_control
from fleet.budgets.models import SpendEntry
from fleet.gateway.errors import GatewayError
from fleet.identity import Permission
from fleet.work.records import task_of
from web.console.render import page
from web.console.session import CsrfChecked, needs
from web.deps import get_runtime

router = APIRouter(prefix="/console/money", include_in_schema=False)

PATH = "/console/money"
TOP = 10
CENT = Decimal("0.01")


def _money(value: Any) -> str:
    return format(Decimal(str(value or 0)).quantize(CENT), "f")


def _pct(used: Any, limit: Any) -> int:
    lim = Decimal(str(limit or 0))
    return 0 if lim <= 0 else min(100, int(Decimal(str(used or 0)) * 100 / lim))


def _state(rt: Any, fleet: str) -> dict[str, Any]:
    now = rt.clock.now().astimezone(UTC)
    day_start = datetime(now.year, now.month, now.day, tzinfo=UTC)
    hour_ago = now - timedelta(hours=1)
    amount = cast(SpendEntry.actual, Numeric(20, 6))
    try:
        budgets: dict[str, Any] | None = rt.budgets.state(fleet)
        store_error = None
    except Exception as exc:  # noqa: BLE001 - the store away is shown, not a crash
        budgets, store_error = None, f"the budget store did not answer ({type(exc).__name__})"
    with rt.sessions() as s:
        today = (SpendEntry.fleet == fleet, SpendEntry.settled_at >= day_start)
        mix = s.execute(
            select(SpendEntry.model, func.count(), func.sum(amount))
            .where(*today)
            .group_by(SpendEntry.model)
            .order_by(func.sum(amount).desc())
        ).all()
        top = s.execute(
            select(SpendEntry.task_id, SpendEntry.agent_id, SpendEntry.model, SpendEntry.actual)
            .where(*today)
            .order_by(amount.desc())
            .limit(TOP)
        ).all()
        hour = s.execute(
            select(SpendEntry.agent_id, func.sum(amount))
            .where(SpendEntry.fleet == fleet, SpendEntry.settled_at >= hour_ago)
            .group_by(SpendEntry.agent_id)
            .order_by(func.sum(amount).desc())
            .limit(TOP)
        ).all()
        burn = s.scalar(
            select(func.sum(amount)).where(
                SpendEntry.fleet == fleet, SpendEntry.settled_at >= hour_ago
            )
        )
    total_today = sum((Decimal(str(m[2] or 0)) for m in mix), Decimal(0))
    per_task = budgets["per_task"] if budgets else "0"
    per_hour = budgets["per_agent_hour"] if budgets else "0"
    return {
        "fleet": fleet,
        "budgets": budgets,
        "store_error": store_error,
        "fleet_day_pct": _pct(budgets["fleet_day"]["used"], budgets["fleet_day"]["limit"])
        if budgets
        else 0,
        "mix": [
            {
                "model": m[0],
                "tasks": m[1],
                "spend": _money(m[2]),
                "pct": _pct(m[2], total_today) if total_today else 0,
            }
            for m in mix
        ],
        "top": [
            {
                "task_id": task_of(t[0]),  # the ledger books each attempt
                "agent_id": t[1],
                "model": t[2],
                "spend": _money(t[3]),
                "pct": _pct(t[3], per_task),
            }
            for t in top
        ],
        "hour": [
            {"agent_id": h[0], "spend": _money(h[1]), "pct": _pct(h[1], per_hour)} for h in hour
        ],
        "burn": _money(burn),
        "today": _money(total_today),
        "pauses": budget_control.pauses(rt.sessions),
    }


@router.get("", dependencies=[needs(Permission.MONITORING_READ)])
async def money_page(
    request: Request,
    fleet: Annotated[str | None, Query(max_length=128)] = None,
    done: str = "",
    error: str = "",
) -> HTMLResponse:
    from fleet.finops.review import previous_week, week_of

    rt = get_runtime(request)
    state = await run_in_threadpool(_state, rt, fleet or rt.settings.fleet_name)
    now = rt.clock.now()
    weeks = {"last_week": previous_week(now), "this_week": week_of(now)}
    return page(request, "money.html", {**state, **weeks, "done": done[:300], "error": error[:300]})


@router.post("/resume", dependencies=[needs(Permission.APPROVALS_REQUEST)])
async def ask_resume(
    request: Request,
    who: CsrfChecked,
    fleet: Annotated[str, Form(min_length=1, max_length=128)],
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    from tasks.budgets import control_deps
    from workers.queues import TaskName

    rt = get_runtime(request)
    try:
        gate = await run_in_threadpool(
            lambda: budget_control.request_resume(
                control_deps(rt), fleet, who.principal_id, reason=reason,
                task=TaskName.BUDGET_RESUME,
            )
        )  # fmt: skip
    except budget_control.BudgetRequestError as exc:
        return RedirectResponse(f"{PATH}?fleet={quote(fleet)}&error={quote(str(exc))}", 303)
    message = f"resume spending of {fleet}: approval request {gate.request_id} ({gate.risk.value})"
    return RedirectResponse(f"{PATH}?fleet={quote(fleet)}&done={quote(message)}", 303)


@router.post("/pause", dependencies=[needs(Permission.CONTROL_OPERATE)])
async def pause(
    request: Request,
    who: CsrfChecked,
    fleet: Annotated[str, Form(min_length=1, max_length=128)],
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    from tasks.budgets import control_deps

    rt = get_runtime(request)
    try:
        done = await run_in_threadpool(
            lambda: budget_control.pause_spending(control_deps(rt), fleet, who.principal_id, reason)
        )
    except budget_control.BudgetRequestError as exc:
        return RedirectResponse(f"{PATH}?fleet={quote(fleet)}&error={quote(str(exc))}", 303)
    message = f"spending of {fleet}: {done['status']}"
    return RedirectResponse(f"{PATH}?fleet={quote(fleet)}&done={quote(message)}", 303)


@router.get("/review", dependencies=[needs(Permission.FINOPS_READ)])
async def review_page(
    request: Request,
    fleet: Annotated[str | None, Query(max_length=128)] = None,
    week: Annotated[str | None, Query(max_length=8, pattern=r"^[0-9]{4}-W[0-9]{2}$")] = None,
) -> HTMLResponse:
    from fleet.finops import render, service
    from fleet.finops.review import previous_week
    from tasks.finops import finops_deps

    rt = get_runtime(request)
    name = fleet or rt.settings.fleet_name
    deps = finops_deps(rt)
    chosen = week or previous_week(rt.clock.now())
    try:
        review = await run_in_threadpool(service.review, deps, name, chosen)
        fragment, error = render.review_fragment(review), ""
    except (ValueError, GatewayError) as exc:
        # A bad week, or the gateway (its exchange rates) away: said on the page.
        fragment, error = "", str(exc)
    context = {"fleet": name, "week": chosen, "review": fragment, "error": error}
    return page(request, "money_review.html", context)
