"""The HTTP API: provisioning jobs, approvals, status, Prometheus metrics.

Routers live in web/routes/, one module per area; this module only assembles
them. The guard (web/guard.py) authenticates every call but /healthz,
/openapi.json and signing in before its body is read; each route names the
permission it needs (web/app_auth.py); every error is a problem document
(web/problems.py), and the OpenAPI document lists each one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from config.settings import get_settings
from fleet import tracing
from fleet.identity import Principal
from fleet.runtime import Runtime
from fleet.sla.metrics import register_sla_collector
from web.app_auth import require
from web.deps import serve_runtime
from web.guard import AccessGuard, Scope
from web.problems import install_problem_handlers, truthful_openapi
from workers import runtime as process_runtime
from workers.app import app as celery_app


def _celery_runtime() -> Runtime:
    return process_runtime.celery_runtime(celery_app, get_settings())


def create_api(build_runtime: Callable[[], Runtime] = _celery_runtime) -> FastAPI:
    """The API; its runtime is built when it starts serving (tests pass their own builder)."""

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        rt = build_runtime()
        tracing.configure(rt.settings.tracing, "fleet-api")
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
                tracing.force_flush()

    # FastAPI's own /docs and /redoc load their scripts from a CDN, which these machines
    # cannot reach: fastapi-offline serves the same pages with the files it ships, under
    # /docs so the guard treats them as /docs.
    api = FastAPIOffline(
        title="Fleet Commander",
        version="0.1.0",
        description="Control plane for fleets of AI agents.",
        lifespan=lifespan,
        static_url="/docs/static",
    )

    def authenticate(scope: Scope, token: str) -> Principal | None:
        rt: Runtime = scope["app"].state.runtime
        return rt.identities.authenticate(token)

    def max_body_bytes() -> int:
        state = api.state
        rt: Runtime | None = getattr(state, "runtime", None)
        return (rt.settings if rt is not None else get_settings()).api.max_body_bytes

    from web.console.session import PREFIX as CONSOLE_PREFIX
    from web.routes.provisioning import PREFIX as PROVISIONING_PREFIX

    api.add_middleware(
        AccessGuard,
        max_body_bytes=max_body_bytes,
        authenticate=authenticate,
        yaml_paths=(PROVISIONING_PREFIX,),
        cookie_paths=(CONSOLE_PREFIX,),
    )
    install_problem_handlers(api)

    def openapi() -> dict[str, Any]:
        return truthful_openapi(api)

    api.openapi = openapi  # type: ignore[method-assign]

    @api.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    from web.routes import auth

    api.include_router(auth.router)

    from web.routes import provisioning

    api.include_router(provisioning.router)

    from web.routes import approvals, audit

    api.include_router(approvals.router)
    api.include_router(approvals.releases)
    api.include_router(audit.router)

    from web.routes import monitoring

    api.include_router(monitoring.router)

    from web.routes import sla

    api.include_router(sla.router)

    from web.routes import tasks

    api.include_router(tasks.router)

    from web.routes import budgets

    api.include_router(budgets.router)
    from web.routes import finops

    api.include_router(finops.router)

    from web.routes import scaling

    api.include_router(scaling.router)

    from web.routes import control

    api.include_router(control.router)

    from web.console import install_console

    install_console(api)
    return api


__all__ = ["create_api", "require"]

app = create_api()
