"""Errors raised by the gateway client, and the mapping from the gateway's problem bodies.

The gateway answers errors as RFC 9457 ``application/problem+json``
(``{type: ".../errors/<code>", title, status, detail, instance}``); the code is
the last segment of ``type``. :func:`from_problem` turns an answer into::

    GatewayError                    any failed call; base of everything below
    ├── BadInput                    400, 422
    ├── AuthError                   401 (missing-key, authentication-error, revoked)
    ├── PaymentRequired             402
    │   ├── InsufficientBalance     insufficient-balance
    │   └── BudgetExceeded          budget-exceeded
    ├── Forbidden                   403 forbidden (ownership) and other 403s
    │   ├── InsufficientTier        insufficient-tier (.required_tier)
    │   ├── AdminOnly               admin-only, forbidden-admin-only
    │   ├── WalletFrozen            wallet-frozen
    │   └── DepositLimitExceeded    deposit-limit-exceeded
    ├── NotFound                    404
    ├── Conflict                    409
    │   ├── AlreadyExists           already-exists
    │   └── IdempotencyKeyReused    idempotency-key-reused
    ├── Gone                        410
    ├── ConfirmationRequired        428
    ├── RateLimited                 429, or paced locally (.paced, .retry_after)
    ├── Unavailable                 5xx, timeouts, connection errors (.maybe_processed)
    │   └── CircuitOpen             the operation's breaker is open: no request made
    ├── MissingKey                  the key ring has no key for the Auth asked
    └── InvalidResponse             not JSON, not an object, or failing the answer model

Only ``Unavailable`` (not ``CircuitOpen``) and ``RateLimited`` are transient.
Messages pass through :func:`redact` so an API key never reaches a log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from fleet.gateway.tracing import TraceContext

REDACTED = "***"
_BEARER = re.compile(r"(?i)\bbearer\s+[^\s\"',;]+")
# Keys the gateway issues, wherever they appear in a message (a rotate error, say).
_GATEWAY_KEY = re.compile(r"\ba2a_[a-z]+_[0-9a-f]{8,}\b")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove every known key, and anything that looks like a key or bearer token, from text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _GATEWAY_KEY.sub(REDACTED, text)
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
        # Attempts of the call that ended in this error (>1: an earlier one's answer was lost).
        self.attempts = 1

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


class PaymentRequired(GatewayError):
    pass


class InsufficientBalance(PaymentRequired):
    pass


class BudgetExceeded(PaymentRequired):
    pass


class Forbidden(GatewayError):
    pass


_REQUIRED_TIER = re.compile(r"requires '([a-z]+)'")


class InsufficientTier(Forbidden):
    @property
    def required_tier(self) -> str | None:
        """The tier the gateway's detail names ("... (requires 'pro')"), if it names one."""
        found = _REQUIRED_TIER.search(self.message)
        return found.group(1) if found else None


class AdminOnly(Forbidden):
    pass


class WalletFrozen(Forbidden):
    pass


class DepositLimitExceeded(Forbidden):
    pass


class NotFound(GatewayError):
    pass


class Conflict(GatewayError):
    pass


class AlreadyExists(Conflict):
    pass


class IdempotencyKeyReused(Conflict):
    pass


class Gone(GatewayError):
    pass


class ConfirmationRequired(GatewayError):
    pass


class RateLimited(GatewayError):
    def __init__(self, message: str, *, paced: bool = False, **fields: Any) -> None:
        super().__init__(message, **fields)
        # True when the client refused to send because the agent's window is full.
        self.paced = paced


class Unavailable(GatewayError):
    def __init__(self, message: str, *, maybe_processed: bool = True, **fields: Any) -> None:
        super().__init__(message, **fields)
        # False only when the request provably did not reach the gateway's handler:
        # the connection was never made, a 503, or an open breaker. A caller that
        # sees True after a money move without an idempotency key must check the
        # state before repeating it.
        self.maybe_processed = maybe_processed


class CircuitOpen(Unavailable):
    def __init__(self, message: str, **fields: Any) -> None:
        fields.setdefault("maybe_processed", False)
        super().__init__(message, **fields)


class MissingKey(GatewayError):
    pass


class InvalidResponse(GatewayError):
    pass


TRANSIENT: tuple[type[GatewayError], ...] = (Unavailable, RateLimited)

_BY_CODE: dict[str, type[GatewayError]] = {
    "insufficient-balance": InsufficientBalance,
    "budget-exceeded": BudgetExceeded,
    "insufficient-tier": InsufficientTier,
    "admin-only": AdminOnly,
    "forbidden-admin-only": AdminOnly,
    "wallet-frozen": WalletFrozen,
    "deposit-limit-exceeded": DepositLimitExceeded,
    "already-exists": AlreadyExists,
    "idempotency-key-reused": IdempotencyKeyReused,
}

_BY_STATUS: dict[int, type[GatewayError]] = {
    400: BadInput,
    422: BadInput,
    401: AuthError,
    402: PaymentRequired,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    428: ConfirmationRequired,
    429: RateLimited,
}


def problem_fields(status: int, content: bytes, reason: str = "") -> tuple[str, str]:
    """(code, message) of an error answer: a problem body, the ``{"error": {...}}``
    form a few routes use, or whatever text came back."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        type_ = body.get("type")
        if isinstance(type_, str) and type_:
            code = type_.rstrip("/").rsplit("/", 1)[-1]
            message = body.get("detail") or body.get("title") or ""
            return code, str(message)
        error = body.get("error")
        if isinstance(error, Mapping) and "code" in error:
            return str(error["code"]), str(error.get("message", ""))
        detail = body.get("detail")
        if isinstance(detail, str):
            return f"http-{status}", detail
    text = content[:200].decode("utf-8", "replace").strip()
    return f"http-{status}", text or reason


def error_class(status: int, code: str) -> type[GatewayError]:
    """The error type for an answer's status and problem code."""
    if status >= 500:
        return Unavailable
    by_code = _BY_CODE.get(code)
    if by_code is not None and by_code.__mro__[1] is _BY_STATUS.get(status):
        return by_code
    if 400 <= status < 500:
        return _BY_STATUS.get(status, GatewayError)
    return InvalidResponse


__all__ = [
    "TRANSIENT",
    "AdminOnly",
    "AlreadyExists",
    "AuthError",
    "BadInput",
    "BudgetExceeded",
    "CircuitOpen",
    "ConfirmationRequired",
    "Conflict",
    "DepositLimitExceeded",
    "Forbidden",
    "GatewayError",
    "Gone",
    "IdempotencyKeyReused",
    "InsufficientBalance",
    "InsufficientTier",
    "InvalidResponse",
    "MissingKey",
    "NotFound",
    "PaymentRequired",
    "RateLimited",
    "Unavailable",
    "WalletFrozen",
    "error_class",
    "problem_fields",
    "redact",
]
