"""Signing in: a username and password exchanged for a short-lived bearer token."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, ConfigDict, Field

from fleet.identity import Principal, SignInFailed
from web.app_auth import require
from web.deps import RuntimeDep
from web.guard import bearer_token
from web.problems import ProblemError

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])

Anyone = Annotated[Principal, Depends(require(None))]


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class SessionIssued(BaseModel):
    token: str
    token_type: str = "bearer"
    expires_at: datetime
    principal_id: str
    role: str


class WhoAmI(BaseModel):
    principal_id: str
    name: str
    role: str
    auth_method: str
    permissions: list[str]


@router.post(
    "/sessions",
    status_code=status.HTTP_201_CREATED,
    responses={401: {"description": "Wrong username or password, or the account is disabled."}},
)
def sign_in(rt: RuntimeDep, credentials: Credentials) -> SessionIssued:
    """Sign in: the token answers as ``Authorization: Bearer …`` until it expires."""
    try:
        issued = rt.identities.sign_in(credentials.username, credentials.password)
    except SignInFailed as exc:
        raise ProblemError(401, str(exc), error="SignInFailed") from None
    return SessionIssued(
        token=issued.token,
        expires_at=issued.expires_at,
        principal_id=issued.principal.principal_id,
        role=issued.principal.role,
    )


@router.delete("/sessions/current", status_code=status.HTTP_204_NO_CONTENT)
def sign_out(rt: RuntimeDep, request: Request, _: Anyone) -> None:
    """End the session whose token made this call (other tokens are left alone)."""
    token = bearer_token(request.scope)
    if token is not None:
        rt.identities.sign_out(token)


@router.get("/whoami")
def whoami(principal: Anyone) -> WhoAmI:
    """The principal this token stands for and what it may do."""
    return WhoAmI(
        principal_id=principal.principal_id,
        name=principal.name,
        role=principal.role,
        auth_method=principal.method.value,
        permissions=sorted(p.value for p in principal.permissions),
    )
