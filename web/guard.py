"""The API checks first: who is calling, and how big and of what type the body is, before
any of it is read.

A pure ASGI middleware in front of every route. In order:

1. the body's declared size: over ``max_body_bytes`` is 413 (a body without a
   Content-Length is counted as it arrives and cut off at the same limit);
2. the bearer token: missing, malformed (non-ASCII included) or unknown is
   401, answered without reading a byte of the body. Public: ``/healthz``,
   ``/openapi.json`` (clients generate code from it; it holds no data) and
   signing in. ``/docs``, ``/redoc`` and ``/metrics`` answer loopback
   clients without a token, anyone else with one;
3. the body's content type: JSON, and YAML only where a route takes YAML (415).

Under ``cookie_paths`` (the web console, web/console/) steps 2 and 3 are the
console's own: it signs people in with an HttpOnly cookie, takes HTML forms and
checks a CSRF token on every POST (web/console/session.py). The size limit holds.

The authenticated principal is left in ``request.state.principal``; each
route then names the permission it needs (:func:`web.app_auth.require`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio.to_thread

from fleet.identity import Principal
from web.problems import ProblemError, problem_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC = frozenset(
    {("GET", "/healthz"), ("GET", "/openapi.json"), ("POST", "/api/v1/auth/sessions")}
)
LOOPBACK_OR_TOKEN = ("/docs", "/redoc", "/metrics")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
JSON_TYPES = re.compile(r"^application/([a-z0-9.+-]+\+)?json$")
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
# RFC 6750 b64token: what a bearer token may contain.
BEARER = re.compile(rb"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *$")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fleet-commander"'}


class BodyTooLarge(ProblemError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is over {limit} bytes", error="BodyTooLarge")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value)
    return None


def bearer_token(scope: Scope) -> str | None:
    raw = _header(scope, b"authorization")
    if raw is None:
        return None
    match = BEARER.match(raw)
    return match.group(1).decode("ascii") if match else None


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def _media_type(scope: Scope) -> str:
    raw = _header(scope, b"content-type") or b""
    return raw.decode("latin-1").split(";")[0].strip().lower()


class AccessGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: Callable[[], int],
        authenticate: Callable[[Scope, str], Principal | None],
        yaml_paths: tuple[str, ...] = (),
        cookie_paths: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.authenticate = authenticate
        self.yaml_paths = yaml_paths
        self.cookie_paths = cookie_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = await self._check(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        limit = self.max_body_bytes()
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, bounded_receive, send)

    async def _check(
        self, scope: Scope
    ) -> Callable[[Scope, Receive, Send], Awaitable[None]] | None:
        method, path = scope["method"], scope["path"]
        limit = self.max_body_bytes()
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.isdigit():
                return problem_response(400, "Content-Length is not a number", error="BadRequest")
            if int(length) > limit:
                return problem_response(
                    413, f"the body is over {limit} bytes", error="BodyTooLarge"
                )
        if self.cookie_paths and _under(path, self.cookie_paths):
            return None
        if (method, path) not in PUBLIC:
            loopback = (scope.get("client") or ("",))[0] in LOOPBACK_HOSTS
            token = bearer_token(scope)
            if token is None and loopback and path.startswith(LOOPBACK_OR_TOKEN):
                pass
            else:
                principal = (
                    await anyio.to_thread.run_sync(self.authenticate, scope, token)
                    if token is not None
                    else None
                )
                if principal is None:
                    return problem_response(
                        401,
                        "missing, malformed, expired or unknown bearer token",
                        error="NotAuthenticated",
                        headers=CHALLENGE,
                    )
                scope.setdefault("state", {})["principal"] = principal
        has_body = (length is not None and length != b"0") or _header(
            scope, b"transfer-encoding"
        ) is not None
        if has_body:
            media = _media_type(scope)
            takes_yaml = path.startswith(self.yaml_paths) if self.yaml_paths else False
            if not (JSON_TYPES.match(media) or (takes_yaml and media in YAML_TYPES)):
                accepted = "application/json" + (" or application/yaml" if takes_yaml else "")
                return problem_response(
                    415,
                    f"send the body as {accepted}, not {media or 'no type'}",
                    error="UnsupportedMediaType",
                )
        return None
