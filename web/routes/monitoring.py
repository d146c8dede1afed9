"""Fleet health over HTTP: Prometheus at /metrics, status, sweeps, alerts, task logs.

/metrics answers loopback clients (a local Prometheus) without a token and
anyone else with one holding metrics:read; a scrape is served from a copy
rendered at most ``api.metrics_cache_s`` ago, so scraping often costs one
Redis scan per interval, not one per request.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, status
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from fleet.clock import epoch_seconds
from fleet.identity import Permission, Principal
from fleet.monitoring import alerts, behaviour, prom
from fleet.monitoring import sweep as sweeping
from fleet.monitoring.snapshot import read_snapshot
from fleet.runtime import Runtime
from web.app_auth import require, require_or_loopback
from web.deps import RuntimeDep
from web.problems import ProblemError

public = APIRouter(tags=["monitoring"])
private = APIRouter(prefix="/api/v1/monitoring", tags=["monitoring"])

Reader = Annotated[Principal, Depends(require(Permission.MONITORING_READ))]
Reporter = Annotated[Principal, Depends(require(Permission.MONITORING_REPORT))]

MAX_TASK_LOGS = 1000


class _RenderedMetrics:
    """The last rendering, reused while fresh; one rendering at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._body = b""
        self._at = float("-inf")

    def get(self, rt: Runtime) -> bytes:
        max_age = rt.settings.api.metrics_cache_s
        with self._lock:
            if time.monotonic() - self._at >= max_age:
                self._body = prom.render(
                    rt.redis,
                    max_agents=rt.settings.metrics.prometheus_max_agents,
                    open_alerts=alerts.open_counts(rt.sessions),
                )
                self._at = time.monotonic()
            return self._body


# One rendering per runtime: an API serving another runtime (tests) never sees this one's.
_rendered: weakref.WeakKeyDictionary[Runtime, _RenderedMetrics] = weakref.WeakKeyDictionary()
_rendered_lock = threading.Lock()


def _rendering_of(rt: Runtime) -> _RenderedMetrics:
    with _rendered_lock:
        return _rendered.setdefault(rt, _RenderedMetrics())


@public.get(
    "/metrics",
    include_in_schema=False,
    dependencies=[Depends(require_or_loopback(Permission.METRICS_READ))],
)
def metrics(rt: RuntimeDep) -> Response:
    """Prometheus text format: fleet totals, open alerts, sweeps, per-agent gauges."""
    return Response(_rendering_of(rt).get(rt), media_type=CONTENT_TYPE_LATEST)


@private.get("/fleet")
def fleet(rt: RuntimeDep, _: Reader) -> dict[str, Any]:
    """The last finished sweep's view of each fleet ("*": all), and open alerts by severity."""
    fleets, meta = sweeping.fleet_health(rt.redis)
    return {"fleets": fleets, "sweep": meta, "open_alerts": alerts.open_counts(rt.sessions)}


@private.get("/agents/{agent_id}", responses={404: {"description": "No snapshot of that agent."}})
def agent(rt: RuntimeDep, _: Reader, agent_id: str) -> dict[str, Any]:
    snap = read_snapshot(rt.redis, agent_id)
    if snap is None:
        raise ProblemError(
            status.HTTP_404_NOT_FOUND, f"no snapshot for agent {agent_id!r}", error="NotFound"
        )
    return {**snap.to_redis(), "breached_terms": list(snap.breached_terms)}


@private.get("/sweeps")
def sweeps(
    rt: RuntimeDep, _: Reader, limit: Annotated[int, Query(ge=1, le=100)] = 10
) -> list[dict[str, Any]]:
    r = rt.redis
    return [
        s for s in (sweeping.sweep_status(r, sid) for sid in sweeping.recent_sweeps(r, limit)) if s
    ]


@private.get("/sweeps/{sweep_id}", responses={404: {"description": "No such sweep."}})
def sweep(
    rt: RuntimeDep, _: Reader, sweep_id: str, failures: Annotated[int, Query(ge=0, le=10000)] = 100
) -> dict[str, Any]:
    r = rt.redis
    found = sweeping.sweep_status(r, sweep_id)
    if found is None:
        raise ProblemError(
            status.HTTP_404_NOT_FOUND,
            f"no sweep {sweep_id!r} (records expire after a day)",
            error="NotFound",
        )
    return {**found, "failures": sweeping.sweep_failures(r, sweep_id, failures)}


@private.get("/alerts")
def list_alerts(
    rt: RuntimeDep,
    _: Reader,
    state: Literal["open", "all"] = "open",
    severity: Literal["info", "warning", "critical", "emergency"] | None = None,
    subject: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return alerts.list_alerts(
        rt.sessions, open_only=state == "open", severity=severity, subject=subject, limit=limit
    )


@private.post("/task-logs", status_code=status.HTTP_202_ACCEPTED)
def task_logs(
    rt: RuntimeDep,
    _: Reporter,
    records: Annotated[list[behaviour.TaskLog], Body(max_length=MAX_TASK_LOGS)],
) -> dict[str, int]:
    """Agents report finished tasks here (fleet.monitoring.behaviour); counted once per task id."""
    s = rt.settings
    accepted = behaviour.ingest(
        rt.redis, records, s.policy.alerts.behaviour.window_s, epoch_seconds()
    )
    return {"received": len(records), "accepted": accepted}


router = APIRouter()
router.include_router(public)
router.include_router(private)
