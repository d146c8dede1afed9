"""The web console: server-rendered pages on the API process, for people who sign in.

``install_console(api)`` mounts it (web/app.py): the static files, the sign-in
pages, and every page module in :data:`PAGE_MODULES` (each exposes
``router: fastapi.APIRouter`` with prefix ``/console/<name>``). Who may see
what is the identity roles' (web/console/nav.py); the guard leaves /console to
the console's own cookie sign-in and CSRF checks (web/console/session.py).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import RedirectResponse, Response

from web.console import session
from web.console.render import page

STATIC_DIR = Path(__file__).parent / "static"

# Page modules, each with a `router`; more are appended as pages land.
PAGE_MODULES: list[str] = [
    "web.console.pages.overview",
    "web.console.pages.agents",
    "web.console.pages.sla",
    "web.console.pages.control",
    "web.console.pages.approvals",
    "web.console.pages.audit",
    "web.console.pages.provisioning",
    "web.console.pages.money",
    "web.console.pages.scaling",
]


def install_console(api: FastAPI) -> None:
    from web.console import live, signin

    api.mount(session.PREFIX + "/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    api.include_router(signin.router)
    api.include_router(live.router)
    for name in PAGE_MODULES:
        api.include_router(importlib.import_module(name).router)

    @api.get(session.PREFIX, include_in_schema=False)
    def console_root() -> Response:
        return RedirectResponse(session.PREFIX + "/", status_code=307)

    @api.exception_handler(session.SignInRequired)
    async def to_sign_in(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, session.SignInRequired)
        return RedirectResponse(exc.next_path, status_code=303)

    @api.exception_handler(session.ConsoleForbidden)
    async def forbidden(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, session.ConsoleForbidden)
        return page(
            request,
            "error.html",
            {"title": "Not allowed", "message": f"Your role may not do this: {exc}."},
            status_code=403,
        )

    @api.exception_handler(session.CsrfRejected)
    async def csrf_rejected(request: Request, exc: Exception) -> Response:
        return page(
            request,
            "error.html",
            {"title": "Form expired", "message": str(exc)},
            status_code=403,
        )


__all__ = ["PAGE_MODULES", "install_console"]
