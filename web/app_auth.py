"""Every route names the permission it needs: ``Depends(require(Permission.X))``.

The guard (web/guard.py) authenticated the caller before the body was read;
this dependency checks what the principal may do and hands it to the route,
which takes any actor it records from it, never from the body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fleet.identity import Permission, Principal
from web.guard import CHALLENGE, LOOPBACK_HOSTS
from web.problems import ProblemError

# Declares the bearer scheme in the OpenAPI document; the guard does the checking.
bearer_scheme = HTTPBearer(auto_error=False, description="A session, service, API or OIDC token.")

PermissionCheck = Callable[..., Principal]


def require(permission: Permission | None) -> PermissionCheck:
    """The principal, if it holds ``permission`` (None: any authenticated principal)."""

    def check(
        request: Request,
        _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    ) -> Principal:
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:
            raise ProblemError(
                401,
                "this operation needs a bearer token",
                error="NotAuthenticated",
                headers=CHALLENGE,
            )
        if permission is not None and not principal.may(permission):
            raise ProblemError(
                403,
                f"{principal.principal_id} ({principal.role}) lacks {permission.value}",
                error="Forbidden",
            )
        return principal

    check.permission = permission  # type: ignore[attr-defined]
    return check


def require_or_loopback(permission: Permission) -> PermissionCheck:
    """As :func:`require`, but a loopback client without a token is let through (None)."""
    strict = require(permission)

    def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    ) -> Principal | None:
        client = request.client.host if request.client else ""
        if getattr(request.state, "principal", None) is None and client in LOOPBACK_HOSTS:
            return None
        return strict(request, credentials)

    check.permission = permission  # type: ignore[attr-defined]
    return check  # type: ignore[return-value]
