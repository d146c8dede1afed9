"""The HTTP API: provisioning jobs, approvals, status, Prometheus metrics.

Routers live in web/routes/, one module per area; this module only assembles
them. Every endpoint but /healthz and /metrics needs the bearer token from
settings (FLEET_API__TOKEN).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from config.settings import get_settings
from fleet.runtime import Runtime
from fleet.sla.metrics import register_sla_collector
from web.app_auth import require_token
from web.deps import serve_runtime
from workers import runtime as process_runtime
from workers.app import app as celery_app


def _celery_runtime() -> Runtime:
    return process_runtime.celery_runtime(celery_app, get_settings())


def create_api(build_runtime: Callable[[], Runtime] = _celery_runtime) -> FastAPI:
    """The API; its runtime is built when it starts serving (tests pass their own builder)."""

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        rt = build_runtime()
        rt.install_audit_sink()
        previous = process_runtime.use(rt)
        # The collector lives on the process-wide registry: it reads whichever runtime serves.
        register_sla_collector(
            lambda: process_runtime.runtime().sessions,
            lambda: process_runtime.runtime().settings.policy,
        )
        with serve_runtime(api, rt):
            try:
                yield
            finally:
                process_runtime.use(previous)
                rt.close()

    api = FastAPI(
        title="Fleet Commander",
        version="0.1.0",
        description="Control plane for fleets of AI agents.",
        lifespan=lifespan,
    )

    @api.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    from web.routes import provisioning

    api.include_router(provisioning.router)

    from web.routes import approvals, audit

    api.include_router(approvals.router)
    api.include_router(audit.router)

    from web.routes import monitoring

    api.include_router(monitoring.router)

    from web.routes import sla

    api.include_router(sla.router)
    return api


__all__ = ["create_api", "require_token"]

app = create_api()
