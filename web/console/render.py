"""Rendering console pages: Jinja2 templates with the person, the nav and the CSRF token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse

from fleet.identity import Permission, Principal
from web.console.nav import nav_for

TEMPLATES_DIR = Path(__file__).parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


def _elsewhere(request: Request) -> dict[str, str]:
    """Where the rest of the system is seen: Flower for the Celery tasks, the API's
    OpenAPI document, the Prometheus metrics."""
    runtime = getattr(request.app.state, "runtime", None)
    flower = getattr(getattr(runtime, "settings", None), "flower", None)
    out = {"openapi": "/openapi.json", "docs": "/docs", "metrics": "/metrics"}
    if flower is not None:
        out["flower"] = f"http://{flower.host}:{flower.port}/"
    return out


def page(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
) -> HTMLResponse:
    """A console page for the signed-in person (``request.state`` set by ConsoleUser)."""
    principal: Principal | None = getattr(request.state, "console_principal", None)
    values: dict[str, Any] = {
        "principal": principal,
        "csrf": getattr(request.state, "console_csrf", ""),
        "nav": nav_for(principal, request.url.path) if principal is not None else [],
        "may": (lambda name: principal is not None and principal.may(Permission(name))),
        "elsewhere": _elsewhere(request),
    }
    values.update(context or {})
    return templates.TemplateResponse(request, template, values, status_code=status_code)
