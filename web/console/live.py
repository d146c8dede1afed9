"""Live updates: server-sent events that carry re-rendered page fragments.

``GET /console/live/overview?fleet=…`` watches the fleet view's meta (the sweep id
and finish time the last pass stored) every ``console.live_poll_s``; when it
changes, the overview's live fragment is rendered again and sent as an event
``fragment`` (JSON ``{"at", "version", "fragments": [{"id", "html"}]}``), which
web/console/static/console.js swaps in. The stream ends after ``console.live_max_s``
(the browser reconnects) or when the browser goes away.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import orjson
from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

from fleet.identity import Permission
from fleet.monitoring import sweep as sweeping
from fleet.monitoring.aggregate import ALL_FLEETS
from fleet.runtime import Runtime
from web.console.pages.overview import FleetName, UnknownFleet, load_overview
from web.console.render import templates
from web.console.session import needs
from web.deps import get_runtime

router = APIRouter(prefix="/console/live", include_in_schema=False)


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def sweep_version(rt: Runtime) -> str:
    meta = sweeping.fleet_health(rt.redis)[1]
    return meta.get("sweep_id", "") + "|" + meta.get("finished_at", "")


def overview_event(rt: Runtime, fleet: str) -> bytes:
    model = load_overview(rt, fleet)
    html = templates.get_template("overview_live.html").render(o=model)
    return sse(
        "fragment",
        {
            "at": rt.clock.now().strftime("%H:%M:%S UTC"),
            "version": model.version,
            "sweep_id": model.sweep.get("sweep_id", ""),
            "fragments": [{"id": "overview-live", "html": html}],
        },
    )


@router.get("/overview", dependencies=[needs(Permission.MONITORING_READ)])
async def overview_stream(request: Request, fleet: FleetName = ALL_FLEETS) -> StreamingResponse:
    rt = get_runtime(request)
    cfg = rt.settings.console

    async def events() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        seen = await anyio.to_thread.run_sync(sweep_version, rt)
        ends = time.monotonic() + cfg.live_max_s
        while time.monotonic() < ends:
            if await request.is_disconnected():
                return
            await anyio.sleep(cfg.live_poll_s)
            version = await anyio.to_thread.run_sync(sweep_version, rt)
            if version == seen:
                continue
            seen = version
            try:
                yield await anyio.to_thread.run_sync(overview_event, rt, fleet)
            except UnknownFleet:
                continue

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
