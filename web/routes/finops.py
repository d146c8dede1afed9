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
from fleet.finops.review import NoSuchWeek, ReviewError
from fleet.gateway.errors import GatewayError
from fleet.identity import Permission, Principal
from fleet.runtime import Runtime
from tasks.finops import finops_deps
from web.app_auth import require
from web.deps import RuntimeDep
from web.problems import ProblemError

router = APIRouter(prefix="/api/v1/finops", tags=["finops"])

Reader = Annotated[Principal, Depends(require(Permission.FINOPS_READ))]
Week = Annotated[str | None, Query(pattern=r"^\d{4}-W\d{2}$", description="ISO week, 2026-W48")]
Fleet = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


def _review(rt: Runtime, fleet: str | None, week: str | None) -> dict[str, Any]:
    deps = finops_deps(rt)
    name = fleet or rt.settings.fleet_name
    try:
        if week is not None:
            kept = service.saved(deps.report_dir, name, week)
            if kept is not None:
                return kept
        return service.review(deps, name, week)
    except NoSuchWeek as exc:
        raise ProblemError(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except ReviewError as exc:
        raise ProblemError(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except (RateError, GatewayError) as exc:
        raise ProblemError(
            status.HTTP_502_BAD_GATEWAY,
            f"the gateway's rates or discounts could not be read: {exc}",
            error=type(exc).__name__,
        ) from None


_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such week (2026-W54)."},
    502: {"description": "The gateway's rates or discounts could not be read."},
}


@router.get("/review", responses=_ERRORS, summary="The weekly FinOps review of a fleet (JSON)")
async def review_json(rt: RuntimeDep, _: Reader, fleet: Fleet = None, week: Week = None) -> Any:
    return await run_in_threadpool(_review, rt, fleet, week)


@router.get(
    "/review.html",
    responses=_ERRORS,
    summary="The weekly FinOps review as a page",
    response_class=HTMLResponse,
)
async def review_page(
    rt: RuntimeDep, _: Reader, fleet: Fleet = None, week: Week = None
) -> HTMLResponse:
    review = await run_in_threadpool(_review, rt, fleet, week)
    return HTMLResponse(render.review_html(review))


@router.get(
    "/economics",
    responses=_ERRORS,
    summary="Monthly cost, ROI and break-even per segment, with inputs",
)
async def economics(rt: RuntimeDep, _: Reader, fleet: Fleet = None, week: Week = None) -> Any:
    review = await run_in_threadpool(_review, rt, fleet, week)
    return {
        "fleet": review["fleet"],
        "week": review["week"],
        "currency": review["currency"],
        "exchange_rates": review["exchange_rates"],
        **review["economics"],
    }
