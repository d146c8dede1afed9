"""What the sync and async clients share: everything but the I/O.

A call is an :class:`Exchange`: it encodes the envelope once, then for each
attempt asks the tool's breaker for permission, opens a new span, and turns the
answer (or the transport failure) into data or a typed error while telling the
breaker how it went. :meth:`ClientCore.retrying_kwargs` says which of those
errors are retried and how long to wait; each client only moves bytes.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import orjson
from pydantic import SecretStr, ValidationError
from tenacity import RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from fleet.gateway.breaker import BreakerRegistry, BreakerState, CircuitBreaker, Clock
from fleet.gateway.errors import (
    REDACTED,
    AuthError,
    BadInput,
    CircuitOpen,
    Conflict,
    GatewayError,
    InvalidResponse,
    NotFound,
    RateLimited,
    Unavailable,
    redact,
)
from fleet.gateway.schemas import GatewayOutput
from fleet.gateway.tools import OUTPUT_MODELS, REPEAT_UNSAFE
from fleet.gateway.tracing import TraceContext
from fleet.gateway.wire import WireError, WireTimeout

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger("fleet.gateway")

OutT = TypeVar("OutT", bound=GatewayOutput)
Key = str | SecretStr

USER_AGENT = "fleet-commander-gateway-client"

# Failures on the way to or from the gateway that say nothing about our input.
# (LocalProtocolError, UnsupportedProtocol, InvalidURL are our bugs: not caught.)
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
)

# The connection was never made, so the request cannot have reached a tool.
_NOT_SENT: tuple[type[BaseException], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)


def _never_sent(exc: BaseException) -> bool:
    if isinstance(exc, WireError):
        return not exc.sent
    return isinstance(exc, _NOT_SENT)


_STATUS_ERRORS: dict[int, type[GatewayError]] = {
    400: BadInput,
    422: BadInput,
    401: AuthError,
    403: AuthError,
    404: NotFound,
    409: Conflict,
    429: RateLimited,
}


@dataclass(frozen=True)
class GatewayConfig:
    """Everything a client needs; mirrors ``config.settings.GatewaySettings``."""

    url: str
    admin_key: Key
    timeout_s: float = 10.0
    connect_timeout_s: float = 3.0
    max_attempts: int = 3
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    retry_after_max_s: float = 30.0
    breaker_failure_threshold: int = 5
    breaker_reset_s: float = 30.0
    max_connections: int = 200
    keepalive_s: float = 50.0

    def __post_init__(self) -> None:
        if isinstance(self.admin_key, str):
            object.__setattr__(self, "admin_key", SecretStr(self.admin_key))
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayConfig:
        gw = settings.gateway
        return cls(
            url=settings.gateway_url,
            admin_key=gw.admin_key,
            timeout_s=gw.timeout_s,
            connect_timeout_s=gw.connect_timeout_s,
            max_attempts=gw.max_attempts,
            backoff_initial_s=gw.backoff_initial_s,
            backoff_max_s=gw.backoff_max_s,
            retry_after_max_s=gw.retry_after_max_s,
            breaker_failure_threshold=gw.breaker_failure_threshold,
            breaker_reset_s=gw.breaker_reset_s,
            max_connections=gw.max_connections,
            keepalive_s=gw.keepalive_s,
        )

    @property
    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s)

    @property
    def limits(self) -> httpx.Limits:
        return httpx.Limits(
            max_connections=self.max_connections, max_keepalive_connections=self.max_connections
        )


@dataclass(frozen=True, slots=True)
class GatewayResult:
    """A successful call: the validated answer and the span that got it."""

    tool: str
    data: dict[str, Any]
    trace: TraceContext
    attempts: int


def _secret(key: Key) -> str:
    return key.get_secret_value() if isinstance(key, SecretStr) else key


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError(f"not a finite amount: {value}")
        return format(value, "f")
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, SecretStr):
        raise TypeError("refusing to send a SecretStr as tool input")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = now if now is not None else time.time()
        seconds = when.timestamp() - current
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    """(code, message) from an error body, tolerating bodies that are not ours."""
    try:
        body = orjson.loads(response.content)
        error = body["error"]
        return str(error["code"]), str(error.get("message", ""))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        text = response.text[:200].strip() if response.content else ""
        return f"http_{response.status_code}", text or response.reason_phrase


def _describe(exc: ValidationError) -> str:
    # include_input=False: the offending value may be a key.
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "answer"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


class Exchange:
    """One call: the encoded request and its attempts so far."""

    __slots__ = (
        "_core",
        "_holds_trial",
        "_key",
        "attempts",
        "breaker",
        "content",
        "parent",
        "span",
        "tool",
    )

    def __init__(
        self,
        core: ClientCore,
        tool: str,
        content: bytes,
        key: str,
        parent: TraceContext,
        breaker: CircuitBreaker,
    ) -> None:
        self._core = core
        self.tool = tool
        self.content = content
        self._key = key
        self.parent = parent
        self.breaker = breaker
        self._holds_trial = False
        self.attempts = 0
        self.span = parent

    def __repr__(self) -> str:
        return f"Exchange(tool={self.tool!r}, attempts={self.attempts}, span={self.span})"

    @property
    def _secrets(self) -> tuple[str, str]:
        return (self._key, self._core.admin_key)

    def begin_attempt(self) -> dict[str, str]:
        """Headers for the next attempt, or CircuitOpen without a request."""
        permitted = self.breaker.allow()
        if permitted is None:
            wait = self.breaker.retry_in()
            raise CircuitOpen(
                f"circuit open after repeated failures; next trial in {wait:.1f}s",
                tool=self.tool,
                code="circuit_open",
                trace=self.span,
                retry_after=wait,
            )
        self._holds_trial = permitted is BreakerState.HALF_OPEN
        self.attempts += 1
        self.span = self.parent.child()
        return {
            "Authorization": f"Bearer {self._key}",
            "traceparent": self.span.traceparent,
        }

    def transport_failed(self, exc: BaseException) -> Unavailable:
        self.breaker.record_failure()
        self._holds_trial = False
        detail = redact(str(exc), self._secrets) or "no detail"
        timed_out = isinstance(exc, httpx.TimeoutException | TimeoutError | WireTimeout)
        code = "timeout" if timed_out else "connection_error"
        return Unavailable(
            f"{type(exc).__name__}: {detail}",
            tool=self.tool,
            code=code,
            trace=self.span,
            maybe_processed=not _never_sent(exc),
        )

    def abandoned(self) -> None:
        """The attempt ended without a verdict (cancelled, or a bug of ours)."""
        if self._holds_trial:
            self.breaker.release()
            self._holds_trial = False

    def answered(self, response: httpx.Response) -> dict[str, Any]:
        """The answer's JSON object, or the typed error it stands for."""
        self._holds_trial = False
        status = response.status_code
        if status >= 500:
            self.breaker.record_failure()
        else:
            # The gateway answered for this tool, even if it blamed us.
            self.breaker.record_success()

        if status == 200:
            try:
                data = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise self._invalid(status, "answer is not JSON") from None
            if not isinstance(data, dict):
                raise self._invalid(
                    status, f"answer is a JSON {type(data).__name__}, not an object"
                )
            return data

        code, message = _error_fields(response)
        message = redact(message, self._secrets)
        if status >= 500:
            error_cls: type[GatewayError] = Unavailable
        elif 400 <= status < 500:
            error_cls = _STATUS_ERRORS.get(status, GatewayError)
        else:
            error_cls = InvalidResponse
            message = f"unexpected HTTP status {status}"
        fields: dict[str, Any] = {
            "tool": self.tool,
            "status": status,
            "code": code,
            "trace": self.span,
        }
        if status == 429:
            # Lowercase: httpx headers ignore case, the wire pool's are lowercased.
            fields["retry_after"] = parse_retry_after(response.headers.get("retry-after"))
        elif status >= 500:
            # 503 is "not now": the tool did not run. Any other 5xx may come after it did.
            fields["maybe_processed"] = status != 503
        raise error_cls(message, **fields)

    def _invalid(self, status: int | None, message: str) -> InvalidResponse:
        return InvalidResponse(
            message, tool=self.tool, status=status, code="invalid_response", trace=self.span
        )

    def typed(self, data: dict[str, Any], model: type[OutT]) -> OutT:
        """The answer as ``model``, carrying the span that got it."""
        try:
            output = model.model_validate(data)
        except ValidationError as exc:
            raise self._invalid(200, _describe(exc)) from None
        output._trace = self.span
        return output

    def result(self, data: dict[str, Any]) -> GatewayResult:
        """The raw answer, checked against the tool's model when we know the tool."""
        model = OUTPUT_MODELS.get(self.tool)
        if model is not None:
            self.typed(data, model)
        return GatewayResult(self.tool, data, self.span, self.attempts)


R = TypeVar("R")


def replay_first(first: GatewayError, attempt: Callable[[Exchange], R]) -> Callable[[Exchange], R]:
    """``attempt``, except that its first call re-raises ``first`` (an attempt already made)."""
    pending = [first]

    def replayed(exchange: Exchange) -> R:
        if pending:
            raise pending.pop()
        return attempt(exchange)

    return replayed


def areplay_first(
    first: GatewayError, attempt: Callable[[Exchange], Awaitable[R]]
) -> Callable[[Exchange], Awaitable[R]]:
    """:func:`replay_first` for coroutines (tenacity awaits only coroutine functions)."""
    pending = [first]

    async def replayed(exchange: Exchange) -> R:
        if pending:
            raise pending.pop()
        return await attempt(exchange)

    return replayed


class ClientCore:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        clock: Clock = time.monotonic,
        breakers: BreakerRegistry | None = None,
    ) -> None:
        self.config = config
        self.admin_key = _secret(config.admin_key)
        self.breakers = breakers or BreakerRegistry(
            failure_threshold=config.breaker_failure_threshold,
            reset_s=config.breaker_reset_s,
            clock=clock,
        )
        self._backoff = wait_random_exponential(
            multiplier=config.backoff_initial_s, max=config.backoff_max_s
        )
        self._stop = stop_after_attempt(config.max_attempts)

    def start(
        self,
        tool: str,
        input: Mapping[str, Any] | None,
        *,
        api_key: Key | None,
        trace: TraceContext | None,
    ) -> Exchange:
        tool = str(tool)
        try:
            content = orjson.dumps({"tool": tool, "input": input or {}}, default=_json_default)
        except TypeError as exc:
            raise BadInput(str(exc), tool=tool, code="unserialisable_input") from None
        key = _secret(api_key) if api_key is not None else self.admin_key
        return Exchange(
            self,
            tool,
            content,
            key,
            trace or TraceContext.new(),
            self.breakers.get_or_create(tool),
        )

    def retrying_kwargs(self, exchange: Exchange) -> dict[str, Any]:
        """Arguments for a tenacity Retrying/AsyncRetrying running one exchange."""
        breaker = exchange.breaker

        repeat_unsafe = exchange.tool in REPEAT_UNSAFE

        def transient(exc: BaseException) -> bool:
            if isinstance(exc, CircuitOpen):
                return False
            if isinstance(exc, RateLimited):
                return exc.retry_after is None or exc.retry_after <= self.config.retry_after_max_s
            if isinstance(exc, Unavailable):
                if repeat_unsafe and exc.maybe_processed:
                    return False
                # Once the breaker has opened, a retry would only be refused.
                return not breaker.is_open()
            return False

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, RateLimited) and exc.retry_after is not None:
                return exc.retry_after
            return self._backoff(state)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.info(
                "gateway %s attempt %d/%d failed (%s); retrying in %.2fs",
                exchange.tool,
                state.attempt_number,
                self.config.max_attempts,
                exc,
                state.upcoming_sleep,
            )

        return {
            "stop": self._stop,
            "wait": wait,
            "retry": retry_if_exception(transient),
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def describe(self) -> str:
        # Never the key itself: reprs end up in logs and tracebacks.
        return f"url={self.config.url!r}, admin_key={REDACTED!r}"
