"""FinOps over HTTP: the weekly review (JSON or its HTML page) and the fleet economics.

A review already kept for that fleet and week (the Monday beat, or `fleet report finops`)
is answered from its file; any other week is built on demand from the ledger.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from fleet.finops import render, service
from fleet.finops.rates import RateError
from fleet.finops.review import ReviewError
from fleet.gateway.errors import GatewayError
from fleet.identity import Permission, Principal
from fleet.runtime import Runtime
from tasks.finops import finops_deps
from web.app_auth import require
from web.deps import RuntimeDep
from web.problems import ProblemError

router = APIRouter(prefix="/api/v1/finops", tags=["finops"])

Reader = Annotated[Principal, Depends(require(Permission.FINOPS_READ))]
Week = Annotated[str | None, Query(max_length=8, description="ISO week, 2026-W48")]
Fleet = Annotated[str | None, Query(max_length=128)]


def _review(rt: Runtime, fleet: str | None, week: str | None) -> dict[str, Any]:
    deps = finops_deps(rt)
    name = fleet or rt.settings.fleet_name
    try:
        if week is not None:
            kept = service.saved(deps.report_dir, name, week)
            if kept is not None:
                return kept
        return service.review(deps, name, week)
    except ReviewError as exc:
        raise ProblemError(422, str(exc)) from None
    except (RateError, GatewayError) as exc:
        raise ProblemError(
            status.HTTP_502_BAD_GATEWAY,
            f"the gateway's rates or discounts could not be read: {exc}",
            error=type(exc).__name__,
        ) from None


@router.get("/review", summary="The weekly FinOps review of a fleet (JSON)")
async def review_json(rt: RuntimeDep, _: Reader, fleet: Fleet = None, week: Week = None) -> Any:
    return await run_in_threadpool(_review, rt, fleet, week)


@router.get(
    "/review.html", summary="The weekly FinOps review as a page", response_class=HTMLResponse
)
async def review_page(
    rt: RuntimeDep, _: Reader, fleet: Fleet = None, week: Week = None
) -> HTMLResponse:
    review = await run_in_threadpool(_review, rt, fleet, week)
    return HTMLResponse(render.review_html(review))


@router.get("/economics", summary="Monthly cost, ROI and break-even per segment, with inputs")
async def economics(rt: RuntimeDep, _: Reader, fleet: Fleet = None, week: Week = None) -> Any:
    review = await run_in_threadpool(_review, rt, fleet, week)
    return {
        "fleet": review["fleet"],
        "week": review["week"],
        "currency": review["currency"],
        "exchange_rates": review["exchange_rates"],
        **review["economics"],
    }
