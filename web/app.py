"""The HTTP API: provisioning jobs, approvals, status, Prometheus metrics.

Routers live in web/routes/, one module per area; this module only assembles
them. Every endpoint but /healthz and /metrics needs the bearer token from
settings (FLEET_API__TOKEN).
"""

from __future__ import annotations

from fastapi import FastAPI

from web.app_auth import require_token


def create_api() -> FastAPI:
    api = FastAPI(
        title="Fleet Commander",
        version="0.1.0",
        description="Control plane for fleets of AI agents.",
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
