"""One error shape for every answer that is not a success: RFC 9457 problem details.

Every error is ``application/problem+json``::

    {"type": "about:blank", "title": "Conflict", "status": 409,
     "detail": "request … is approved, not pending", "error": "NotPending"}

``error`` names the refusal for programs; ``problems`` lists each invalid
input (validation failures). The OpenAPI document lists, for every
operation, each status it can answer, all with this schema.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    error: str | None = None
    problems: list[str] | None = None


def problem_body(
    status: int, detail: str, *, error: str | None = None, problems: list[str] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if error is not None:
        body["error"] = error
    if problems is not None:
        body["problems"] = problems
    return body


def problem_response(
    status: int,
    detail: str,
    *,
    error: str | None = None,
    problems: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        problem_body(status, detail, error=error, problems=problems),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


class ProblemError(HTTPException):
    """Raise it from a route: answered as a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        error: str | None = None,
        problems: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, detail, headers=headers)
        self.error = error
        self.problems = problems


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(request)"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error = getattr(exc, "error", None)
    problems = getattr(exc, "problems", None)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return problem_response(
        exc.status_code,
        detail,
        error=error,
        problems=problems,
        headers=dict(exc.headers or {}),
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [f"{_location(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
    return problem_response(
        422,
        problems[0] if problems else "invalid request",
        error="InvalidRequest",
        problems=problems,
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error answering %s %s", request.method, request.url.path)
    return problem_response(500, "internal error; it has been logged", error="InternalError")


def install_problem_handlers(api: FastAPI) -> None:
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(Exception, _unexpected)


def _problem_ref() -> dict[str, Any]:
    return {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}


_WHEN = {
    400: "The body is not parseable as its content type.",
    401: "No credentials, or credentials that are wrong, expired or revoked.",
    403: "The principal lacks the permission this operation needs.",
    413: "The body is larger than FLEET_API__MAX_BODY_BYTES; refused before it is read.",
    415: "The body's content type is not one this operation accepts.",
    422: "An input is invalid; ``problems`` names each one.",
}


def _hoist_defs(node: Any, components: dict[str, Any]) -> Any:
    """Move JSON Schema ``$defs`` embedded in operations into components, fixing their refs."""
    if isinstance(node, dict):
        for name, definition in node.pop("$defs", {}).items():
            components.setdefault(name, _hoist_defs(definition, components))
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                node[key] = "#/components/schemas/" + value.removeprefix("#/$defs/")
            else:
                _hoist_defs(value, components)
    elif isinstance(node, list):
        for item in node:
            _hoist_defs(item, components)
    return node


def truthful_openapi(api: FastAPI) -> dict[str, Any]:
    """The OpenAPI document with every error status an operation can answer, as problems.

    Rules the guard and FastAPI enforce on every operation are added here so
    no route can forget them: 401/403 where a permission is needed, 413/415
    where a body is read, 422 where there is any input to validate.
    """
    if api.openapi_schema:
        return api.openapi_schema
    schema = get_openapi(
        title=api.title,
        version=api.version,
        description=api.description,
        routes=api.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    _hoist_defs(schema, components)
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            codes: set[int] = set()
            if operation.get("security"):
                codes |= {401, 403}
            if "requestBody" in operation:
                codes |= {400, 413, 415, 422}
            if operation.get("parameters"):
                codes.add(422)
            for implied in codes:
                responses.setdefault(str(implied), {"description": _WHEN[implied]})
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400:
                    response["content"] = _problem_ref()
                    response.setdefault("description", HTTPStatus(int(code)).phrase)
    api.openapi_schema = schema
    return schema
