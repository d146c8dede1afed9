"""The HTTP API: provisioning jobs, approvals, status, Prometheus metrics.

Routers live in web/routes/, one module per area; this module only assembles
them. Every endpoint but /healthz and /metrics needs the bearer token from
settings (FLEET_API__TOKEN).
"""

from __future__ import annotations

import secrets

from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from config.settings import get_settings

_bearer = HTTPBearer(auto_error=False)


def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    expected = get_settings().api.token.get_secret_value()
    if credentials is None or not secrets.compare_digest(credentials.credentials, expected):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def create_api() -> FastAPI:
    api = FastAPI(title="Fleet Commander", version="0.1.0", description="Control plane for fleets of AI agents.")

    @api.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return api


app = create_api()
