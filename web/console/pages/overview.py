"""The fleet overview: agents by health class, latency, errors, SLA, burn, alerts — live."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse

from fleet.identity import Permission
from web.console.render import page
from web.console.session import needs

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/", dependencies=[needs(Permission.MONITORING_READ)])
def overview(request: Request) -> HTMLResponse:
    return page(request, "overview.html", {})
