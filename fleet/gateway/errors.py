"""Errors raised by the gateway client.

Our exception hierarchy::

    GatewayError                 any failed call; base of everything below
    ├── BadInput                 400, 422: the input was rejected
    ├── AuthError                401, 403: missing, wrong or revoked key
    ├── NotFound                 404: unknown agent, wallet, dispute... or tool
    ├── Conflict                 409: e.g. registering an id that is already live
    ├── RateLimited              429: carries ``retry_after`` (seconds or None)
    ├── Unavailable              5xx, timeouts, connection errors, dropped connections
    │   └── CircuitOpen          the tool's breaker is open: no request was made
    └── InvalidResponse          non-JSON, not an object, or failing the tool's schema

Other 4xx statuses raise the plain ``GatewayError``. Only ``Unavailable`` (not
``CircuitOpen``) and ``RateLimited`` are transient: the client retries those,
within its ceiling, and nothing else. ``Unavailable.maybe_processed`` says
whether the gateway may have acted on the request anyway (a timeout or a
dropped connection after sending): tools that must not run twice are not
retried then (see ``fleet.gateway.tools.REPEAT_UNSAFE``).

Every error carries ``tool``, ``status`` (HTTP status, or None when no answer
came back), ``code`` and ``message`` (from the gateway's error body, or made up
locally), ``trace`` (the trace context of the last attempt, for the audit entry)
and ``retry_after`` (seconds, when the gateway or the breaker said how long to
wait). Messages pass through :func:`redact` so an API key never reaches a log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleet.gateway.tracing import TraceContext

REDACTED = "***"
_BEARER = re.compile(r"(?i)\bbearer\s+[^\s\"',;]+")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove every known key, and anything that looks like a bearer token, from text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _BEARER.sub(f"Bearer {REDACTED}", text)


class GatewayError(Exception):
    def __init__(
        self,
        message: str,
        *,
        tool: str | None = None,
        status: int | None = None,
        code: str | None = None,
        trace: TraceContext | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.tool = tool
        self.status = status
        self.code = code
        self.trace = trace
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = self.tool or "gateway"
        status = f" {self.status}" if self.status is not None else ""
        code = f" {self.code}" if self.code else ""
        return f"{where}:{status}{code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tool={self.tool!r}, status={self.status!r}, "
            f"code={self.code!r}, message={self.message!r})"
        )

    # Keyword-only attributes would be lost by Exception's default pickling,
    # and Celery pickles exceptions raised by tasks.
    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,), self.__dict__)


class BadInput(GatewayError):
    pass


class AuthError(GatewayError):
    pass


class NotFound(GatewayError):
    pass


class Conflict(GatewayError):
    pass


class RateLimited(GatewayError):
    pass


class Unavailable(GatewayError):
    def __init__(self, message: str, *, maybe_processed: bool = True, **fields: Any) -> None:
        super().__init__(message, **fields)
        # False only when the request provably did not reach a tool: the
        # connection was never made, a 503, or an open breaker. A caller that
        # sees True after a money move must check the state before repeating it.
        self.maybe_processed = maybe_processed


class CircuitOpen(Unavailable):
    def __init__(self, message: str, **fields: Any) -> None:
        fields.setdefault("maybe_processed", False)
        super().__init__(message, **fields)


class InvalidResponse(GatewayError):
    pass


TRANSIENT: tuple[type[GatewayError], ...] = (Unavailable, RateLimited)

__all__ = [
    "TRANSIENT",
    "AuthError",
    "BadInput",
    "CircuitOpen",
    "Conflict",
    "GatewayError",
    "InvalidResponse",
    "NotFound",
    "RateLimited",
    "Unavailable",
    "redact",
]
