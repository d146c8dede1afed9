"""Signing in to the console: the identity service's session token in a cookie.

The token :meth:`fleet.identity.Identities.sign_in` issues is kept in an HttpOnly,
SameSite=Strict cookie; every console page resolves it back to a
:class:`~fleet.identity.Principal` (``ConsoleUser``) or sends the browser to the
sign-in page. Every POST form carries a CSRF token (template variable ``csrf``,
form field ``csrf``, checked by :func:`verify_csrf`): an HMAC of the session token,
so it needs no storage and dies with the session. The sign-in form itself is
protected by a double-submitted random cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated
from urllib.parse import quote

import anyio.to_thread
from fastapi import Depends, Form, Request, params
from starlette.responses import Response

from fleet.identity import Permission, Principal
from web.deps import get_runtime

COOKIE = "fleet_console"
PRESIGN_COOKIE = "fleet_console_presign"
PREFIX = "/console"
SIGN_IN_PATH = PREFIX + "/sign-in"
CSRF_FIELD = "csrf"
_CSRF_CONTEXT = b"fleet-console-csrf-v1"


class SignInRequired(Exception):
    """No valid session cookie: the console answers with a redirect to the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class ConsoleForbidden(Exception):
    """A signed-in person without the permission a page or form needs."""

    def __init__(self, principal: Principal, permission: Permission) -> None:
        super().__init__(f"{principal.principal_id} ({principal.role}) lacks {permission.value}")
        self.principal = principal
        self.permission = permission


class CsrfRejected(Exception):
    """A POST whose CSRF token is missing or does not belong to the session."""


def csrf_for(session_token: str) -> str:
    """The CSRF token of a session: HMAC-SHA256 keyed by the (secret) session token."""
    return hmac.new(session_token.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def session_token(request: Request) -> str | None:
    token = request.cookies.get(COOKIE)
    return token if token and token.isascii() and len(token) <= 512 else None


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console path only (no open redirect)."""
    if value and value.startswith(PREFIX) and not value.startswith("//") and "\\" not in value:
        return value
    return PREFIX + "/"


def sign_in_redirect_target(request: Request) -> str:
    path = request.url.path
    if request.url.query:
        path += "?" + request.url.query
    return f"{SIGN_IN_PATH}?next={quote(safe_next(path), safe='')}"


async def console_user(request: Request) -> Principal:
    """The signed-in person, or :class:`SignInRequired` (answered with a redirect)."""
    cached: Principal | None = getattr(request.state, "console_principal", None)
    if cached is not None:
        return cached
    token = session_token(request)
    principal: Principal | None = None
    if token is not None:
        rt = get_runtime(request)
        principal = await anyio.to_thread.run_sync(rt.identities.authenticate, token)
    if principal is None:
        raise SignInRequired(sign_in_redirect_target(request))
    request.state.console_principal = principal
    request.state.console_csrf = csrf_for(token or "")
    return principal


ConsoleUser = Annotated[Principal, Depends(console_user)]


def needs(permission: Permission) -> params.Depends:
    """A dependency: the signed-in person, if they hold ``permission``."""

    async def check(principal: ConsoleUser) -> Principal:
        if not principal.may(permission):
            raise ConsoleForbidden(principal, permission)
        return principal

    result: params.Depends = Depends(check)
    return result


async def verify_csrf(
    request: Request, principal: ConsoleUser, csrf: Annotated[str, Form(max_length=128)] = ""
) -> Principal:
    """For POST forms: the form's ``csrf`` field must be the session's token."""
    token = session_token(request) or ""
    if not csrf or not hmac.compare_digest(csrf, csrf_for(token)):
        raise CsrfRejected("the form's CSRF token is missing or stale: reload the page")
    return principal


CsrfChecked = Annotated[Principal, Depends(verify_csrf)]


def set_session_cookie(response: Response, request: Request, token: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=max(0, max_age),
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def new_presign_token() -> str:
    return secrets.token_urlsafe(24)


def set_presign_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        PRESIGN_COOKIE,
        token,
        max_age=3600,
        path=SIGN_IN_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def presign_ok(request: Request, submitted: str) -> bool:
    expected = request.cookies.get(PRESIGN_COOKIE) or ""
    return bool(expected) and hmac.compare_digest(expected, submitted)
