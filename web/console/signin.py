"""The sign-in and sign-out pages of the console."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Form, Query, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleet.identity import SignInFailed
from web.console import session
from web.console.render import page
from web.deps import get_runtime

router = APIRouter(prefix=session.PREFIX, include_in_schema=False)


def _form(request: Request, next_path: str, error: str | None, status: int) -> HTMLResponse:
    token = session.new_presign_token()
    response = page(
        request,
        "sign_in.html",
        {"next": next_path, "presign": token, "error": error},
        status_code=status,
    )
    session.set_presign_cookie(response, request, token)
    return response


@router.get("/sign-in")
def sign_in_form(
    request: Request, next: Annotated[str | None, Query(max_length=2048)] = None
) -> HTMLResponse:
    return _form(request, session.safe_next(next), None, 200)


@router.post("/sign-in")
async def sign_in(
    request: Request,
    username: Annotated[str, Form(min_length=1, max_length=64)],
    password: Annotated[str, Form(min_length=1, max_length=1024)],
    presign: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/console/",
) -> Response:
    target = session.safe_next(next)
    if not session.presign_ok(request, presign):
        return _form(request, target, "The form expired: sign in again.", 400)
    rt = get_runtime(request)
    try:
        issued = await anyio.to_thread.run_sync(rt.identities.sign_in, username, password)
    except SignInFailed as exc:
        return _form(request, target, str(exc).capitalize() + ".", 401)
    response = RedirectResponse(target, status_code=303)
    now = rt.clock.now()
    expires = issued.expires_at
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    session.set_session_cookie(
        response, request, issued.token, int((expires - now).total_seconds())
    )
    response.delete_cookie(session.PRESIGN_COOKIE, path=session.SIGN_IN_PATH)
    return response


@router.post("/sign-out")
async def sign_out(request: Request, _: session.CsrfChecked) -> Response:
    token = session.session_token(request)
    if token is not None:
        await anyio.to_thread.run_sync(get_runtime(request).identities.sign_out, token)
    response = RedirectResponse(session.SIGN_IN_PATH, status_code=303)
    response.delete_cookie(session.COOKIE, path=session.PREFIX)
    return response
