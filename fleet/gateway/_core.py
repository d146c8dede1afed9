"""What the sync and async clients share: everything but the I/O.

A call is an :class:`Exchange`: it resolves the operation's key, encodes the
request once (with one ``Idempotency-Key`` for every attempt of a money
operation), then for each attempt checks the agent's hourly window and the
operation's breaker, opens a new span, and turns the answer (or the transport
failure) into data or a typed error, recording ``X-Charged`` and the
``X-RateLimit-*`` headers. :meth:`ClientCore.retrying_kwargs` says which errors
are retried and how long to wait; each client only moves bytes.

Spans: with tracing on (:mod:`fleet.tracing`), each attempt is one OpenTelemetry CLIENT
span ``execute_tool <operation>`` (GenAI ``execute_tool`` with ``gen_ai.tool.name`` and
``gen_ai.agent.id``, and the HTTP client attributes: method, ``url.full``, server, status,
``http.request.resend_count``, ``error.type``; ``X-Charged`` as ``fleet.gateway.charged``),
child of the span current when the call was made (or of an explicit ``trace=``), and
the ``traceparent`` sent is that span's. With tracing off the ids are made here as before,
in the current span's trace when there is one.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlencode, urlsplit

import httpx
import orjson
from pydantic import SecretStr, ValidationError
from tenacity import RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from fleet import tracing
from fleet.gateway.breaker import BreakerRegistry, BreakerState, CircuitBreaker, Clock
from fleet.gateway.errors import (
    REDACTED,
    BadInput,
    CircuitOpen,
    GatewayError,
    InvalidResponse,
    RateLimited,
    Unavailable,
    error_class,
    problem_fields,
    redact,
)
from fleet.gateway.keys import KeyRing, StaticKeyRing, resolve
from fleet.gateway.operations import Operation
from fleet.gateway.schemas import GatewayOutput
from fleet.gateway.tracing import TraceContext
from fleet.gateway.wire import WireError, WireTimeout

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger("fleet.gateway")

OutT = TypeVar("OutT", bound=GatewayOutput)
Key = str | SecretStr

USER_AGENT = "fleet-commander-gateway-client"
BASE_HEADERS = {"Accept": "application/json", "User-Agent": USER_AGENT}

# The gateway's rate window: a sliding hour per agent id.
WINDOW_S = 3600.0

# Failures on the way to or from the gateway that say nothing about our input.
# (LocalProtocolError, UnsupportedProtocol, InvalidURL are our bugs: not caught.)
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
)

# The connection was never made, so the request cannot have reached the gateway.
_NOT_SENT: tuple[type[BaseException], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)


def _never_sent(exc: BaseException) -> bool:
    if isinstance(exc, WireError):
        return not exc.sent
    return isinstance(exc, _NOT_SENT)


def _dropped(exc: BaseException) -> bool:
    """The server closed the connection without answering (not a timeout, not a refused
    connect): what uvicorn does to a kept-alive connection after an error answer."""
    if isinstance(exc, WireTimeout | httpx.TimeoutException):
        return False
    if isinstance(exc, WireError):
        return exc.sent
    return isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError)


@dataclass(frozen=True)
class GatewayConfig:
    """Everything a client needs but its keys; mirrors ``config.settings.GatewaySettings``.

    ``url`` is the gateway's root (``http://127.0.0.1:8765``); operations carry
    their ``/v1/...`` paths. ``admin_key``, when set, is the key ring's admin key
    for clients built without a ring of their own.
    """

    url: str
    admin_key: Key | None = None
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
    max_response_header_bytes: int = 64 * 1024
    max_response_body_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if isinstance(self.admin_key, str):
            object.__setattr__(self, "admin_key", SecretStr(self.admin_key))
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        object.__setattr__(self, "url", self.url.rstrip("/"))

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
            max_response_header_bytes=gw.max_response_header_bytes,
            max_response_body_bytes=gw.max_response_body_bytes,
        )

    @property
    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s)

    @property
    def limits(self) -> httpx.Limits:
        return httpx.Limits(
            max_connections=self.max_connections, max_keepalive_connections=self.max_connections
        )

    def key_ring(self) -> StaticKeyRing:
        return StaticKeyRing(self.admin_key)


@dataclass(frozen=True, slots=True)
class RateWindow:
    """The ``X-RateLimit-*`` headers of one answer.

    ``reset_s`` is what the gateway sends: seconds to the next wall-clock hour,
    not to when its sliding window frees a slot."""

    limit: int
    remaining: int
    reset_s: int


@dataclass(frozen=True, slots=True)
class Charge:
    """One ``X-Charged`` amount. ``agent_id`` is the agent the operation concerns;
    ``by_admin`` says the admin key made the call (then the admin's wallet paid)."""

    operation: str
    agent_id: str | None
    amount: Decimal
    trace_id: str
    at: datetime
    by_admin: bool = False


@dataclass(frozen=True, slots=True)
class GatewayResult(Generic[OutT]):
    """A successful call: the validated answer and what came with it."""

    value: OutT
    charged: Decimal | None
    rate: RateWindow | None
    trace: TraceContext
    attempts: int
    status: int


class RateWindows:
    """A sliding 3600 s log of requests per agent id, as the gateway keeps it.

    Every request sent counts, answered or rejected (the gateway records the
    event before checking it). The limit is learnt from ``X-RateLimit-Limit``;
    ``-Remaining`` tops the log up with calls made elsewhere (other processes,
    the agent itself). The gateway admits a request while the count including
    it stays below the limit (a free key's 100/h gives 99 answers), so the
    client refuses, without sending, the request that would be rejected.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._sent: dict[str, collections.deque[float]] = {}
        self._limit: dict[str, int] = {}

    def _trim(self, log: collections.deque[float], now: float) -> None:
        while log and log[0] <= now - WINDOW_S:
            log.popleft()

    def wait_s(self, agent: str) -> float:
        """0 when a request may go now, else seconds until the window has room."""
        with self._lock:
            limit = self._limit.get(agent)
            log = self._sent.get(agent)
            if limit is None or not log:
                return 0.0
            now = self._clock()
            self._trim(log, now)
            excess = len(log) + 2 - limit
            if excess <= 0:
                return 0.0
            return max(0.0, log[excess - 1] + WINDOW_S - now)

    def sent(self, agent: str) -> None:
        with self._lock:
            self._sent.setdefault(agent, collections.deque()).append(self._clock())

    def observed(self, agent: str, window: RateWindow) -> None:
        with self._lock:
            self._limit[agent] = window.limit
            self._pad(agent, window.limit - window.remaining)

    def exhausted(self, agent: str) -> None:
        """A 429: the window is at least full, whatever our log says."""
        with self._lock:
            limit = self._limit.get(agent)
            if limit is not None:
                self._pad(agent, limit)

    def knows(self, agent: str) -> bool:
        """Whether the agent's limit has been seen in an answer's headers."""
        with self._lock:
            return agent in self._limit

    def _pad(self, agent: str, count: int) -> None:
        log = self._sent.setdefault(agent, collections.deque())
        now = self._clock()
        self._trim(log, now)
        for _ in range(count - len(log)):
            log.append(now)

    def count(self, agent: str) -> int:
        with self._lock:
            log = self._sent.get(agent)
            if not log:
                return 0
            self._trim(log, self._clock())
            return len(log)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError(f"not a finite amount: {value}")
        return format(value, "f")
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, SecretStr):
        raise TypeError("refusing to send a SecretStr in a request body")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _describe(exc: ValidationError) -> str:
    # include_input=False: the offending value may be a key.
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "answer"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def parse_charged(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


def parse_rate(headers: Mapping[str, str]) -> RateWindow | None:
    try:
        return RateWindow(
            int(headers["x-ratelimit-limit"]),
            int(headers["x-ratelimit-remaining"]),
            int(headers.get("x-ratelimit-reset", "0")),
        )
    except (KeyError, ValueError):
        return None


class Exchange(Generic[OutT]):
    """One logical call: the encoded request and its attempts so far."""

    __slots__ = (
        "_core",
        "_holds_trial",
        "_resent",
        "_roots",
        "attempts",
        "breaker",
        "by_admin",
        "content",
        "headers",
        "idempotency_key",
        "key",
        "op",
        "otel_parent",
        "otel_span",
        "parent",
        "span",
        "target",
        "window_agent",
    )

    def __init__(
        self,
        core: ClientCore,
        op: Operation[OutT],
        idempotency_key: str | None,
        parent: TraceContext | None,
    ) -> None:
        self._core = core
        self.op = op
        credential = resolve(op.auth, core.keys, op.agent_id)
        self.key = credential.key
        self.window_agent = credential.window_agent
        self.by_admin = self.key is not None and credential.window_agent is None
        if idempotency_key is None and op.moves_money:
            # Once per logical call: every retry below carries the same key.
            idempotency_key = uuid.uuid4().hex
        self.idempotency_key = idempotency_key
        self.target = op.path + (f"?{urlencode(op.query)}" if op.query else "")
        headers = dict(BASE_HEADERS)
        headers.update(op.headers)
        if op.body is not None:
            try:
                self.content = orjson.dumps(op.body, default=_json_default)
            except TypeError as exc:
                raise BadInput(str(exc), tool=op.name, code="unserialisable-input") from None
            headers["Content-Type"] = "application/json"
        else:
            self.content = b""
        if self.key is not None:
            headers["Authorization"] = f"Bearer {self.key}"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        self.headers = headers
        # Whose child each attempt's span is: the explicit trace, else the current span.
        self.otel_parent: tracing.Context | None = None
        self.otel_span: tracing.Span | None = None
        self._roots = False
        if parent is None:
            ids = tracing.current_ids()
            self._roots = ids is None
            if tracing.enabled():
                self.otel_parent = tracing.current_context()
            if ids is None:
                parent = TraceContext.new()
            else:
                parent = TraceContext(*ids, tracing.current_sampled())
        elif tracing.enabled():
            self.otel_parent = tracing.remote_context(
                parent.trace_id, parent.span_id, sampled=parent.sampled
            )
        self.parent = parent
        self.breaker: CircuitBreaker = core.breakers.get_or_create(op.name)
        self._holds_trial = False
        self._resent = False
        self.attempts = 0
        self.span = parent

    def __repr__(self) -> str:
        return f"Exchange(op={self.op.name!r}, attempts={self.attempts}, span={self.span})"

    @property
    def tool(self) -> str:
        return self.op.name

    @property
    def resendable(self) -> bool:
        """Safe to send again: idempotent, or deduplicated by the gateway through its key."""
        return self.op.idempotent or self.idempotency_key is not None

    def _secrets(self) -> tuple[str, ...]:
        return (self.key or "", self._core.admin_secret or "")

    def begin_attempt(self) -> dict[str, str]:
        """Headers for the next attempt; RateLimited (paced) or CircuitOpen without a request."""
        if self.window_agent is not None:
            wait = self._core.windows.wait_s(self.window_agent)
            if wait > 0:
                raise RateLimited(
                    f"hourly window of {self.window_agent!r} is full; room in {wait:.0f}s",
                    tool=self.tool,
                    code="rate-limit-paced",
                    trace=self.span,
                    retry_after=wait,
                    paced=True,
                )
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
        if self.otel_parent is None:
            self.span = self.parent.child()
        else:
            self._start_span()
        if self.window_agent is not None:
            self._core.windows.sent(self.window_agent)
        headers = dict(self.headers)
        headers["traceparent"] = self.span.traceparent
        return headers

    def _start_span(self) -> None:
        self._end_span(error="connection_dropped")  # an attempt that is sent again
        core = self._core
        attributes: dict[str, tracing.Attribute] = {
            tracing.GENAI_OPERATION_NAME: tracing.OP_EXECUTE_TOOL,
            tracing.GENAI_TOOL_NAME: self.op.name,
            tracing.HTTP_REQUEST_METHOD: self.op.method,
            tracing.URL_FULL: core.url(self),
            tracing.SERVER_ADDRESS: core.server_address,
        }
        if core.server_port is not None:
            attributes[tracing.SERVER_PORT] = core.server_port
        if self.op.agent_id is not None:
            attributes[tracing.GENAI_AGENT_ID] = self.op.agent_id
        if self.attempts > 1:
            attributes[tracing.HTTP_REQUEST_RESEND_COUNT] = self.attempts - 1
        otel_span = tracing.start_span(
            f"{tracing.OP_EXECUTE_TOOL} {self.op.name}",
            kind=tracing.CLIENT,
            parent=self.otel_parent,
            attributes=attributes,
        )
        ids = tracing.ids_of(otel_span) if otel_span is not None else None
        if otel_span is None or ids is None:  # tracing switched off meanwhile
            self.span = self.parent.child()
            return
        self.otel_span = otel_span
        self.span = TraceContext(*ids, otel_span.get_span_context().trace_flags.sampled)
        if self._roots:
            # A call made outside any span roots its own trace; its retries stay in it.
            self._roots = False
            self.otel_parent = tracing.context_with(otel_span)

    def _end_span(
        self,
        *,
        status: int | None = None,
        error: BaseException | str | None = None,
        charged: Decimal | None = None,
    ) -> None:
        otel_span, self.otel_span = self.otel_span, None
        if otel_span is None:
            return
        if status is not None:
            otel_span.set_attribute(tracing.HTTP_RESPONSE_STATUS_CODE, status)
        if charged is not None:
            otel_span.set_attribute(tracing.FLEET_GATEWAY_CHARGED, format(charged, "f"))
        if error is not None:
            tracing.set_error(otel_span, error)
        otel_span.end()

    def resend_after_drop(self, exc: BaseException) -> bool:
        """Whether to send once more at once: the server dropped a kept-alive connection
        (uvicorn does after an error answer) and the request is safe to repeat. Once per call;
        the drop is not the gateway failing, so the breaker is not told."""
        if self._resent or not self.resendable or not _dropped(exc):
            return False
        self._resent = True
        if self._holds_trial:
            self.breaker.release()
            self._holds_trial = False
        log.debug("gateway %s: connection dropped (%s); sending once more", self.tool, exc)
        return True

    def transport_failed(self, exc: BaseException) -> Unavailable:
        self.breaker.record_failure()
        self._holds_trial = False
        detail = redact(str(exc), self._secrets()) or "no detail"
        timed_out = isinstance(exc, httpx.TimeoutException | TimeoutError | WireTimeout)
        code = "timeout" if timed_out else "connection_error"
        self._end_span(error="timeout" if timed_out else type(exc).__qualname__)
        return Unavailable(
            f"{type(exc).__name__}: {detail}",
            tool=self.tool,
            code=code,
            trace=self.span,
            maybe_processed=not _never_sent(exc),
        )

    def abandoned(self) -> None:
        """The attempt ended without a verdict (cancelled, or a bug of ours)."""
        self._end_span(error="abandoned")
        if self._holds_trial:
            self.breaker.release()
            self._holds_trial = False

    def answered(
        self, status: int, headers: Mapping[str, str], content: bytes
    ) -> GatewayResult[OutT]:
        """The validated answer, or the typed error it stands for.
        ``headers`` must look names up case-insensitively or be lowercased."""
        if self.otel_span is None:
            return self._answered(status, headers, content)
        try:
            result = self._answered(status, headers, content)
        except GatewayError as exc:
            self._end_span(
                status=status,
                error=str(status) if status >= 400 else exc.code or "invalid_response",
            )
            raise
        except BaseException as exc:
            self._end_span(status=status, error=exc)
            raise
        self._end_span(status=status, charged=result.charged)
        return result

    def _answered(
        self, status: int, headers: Mapping[str, str], content: bytes
    ) -> GatewayResult[OutT]:
        self._holds_trial = False
        if status >= 500:
            self.breaker.record_failure()
        else:
            # The gateway answered for this operation, even if it blamed us.
            self.breaker.record_success()

        rate = parse_rate(headers)
        if rate is not None and self.window_agent is not None:
            self._core.windows.observed(self.window_agent, rate)

        if 200 <= status < 300:
            charged = parse_charged(headers.get("x-charged"))
            if charged is not None:
                self._core.report_charge(self, charged)
            value = self._typed(status, content)
            return GatewayResult(value, charged, rate, self.span, self.attempts, status)

        code, message = problem_fields(status, content)
        message = redact(message, self._secrets())
        fields: dict[str, Any] = {
            "tool": self.tool,
            "status": status,
            "code": code,
            "trace": self.span,
        }
        if status == 429 and self.window_agent is not None:
            # No Retry-After on this gateway's 429: say when our own log frees a slot. With
            # no limit learnt yet that is unknown, not "now": a retry at once would count
            # against the window too and extend the lockout.
            windows = self._core.windows
            windows.exhausted(self.window_agent)
            wait = windows.wait_s(self.window_agent)
            fields["retry_after"] = wait if windows.knows(self.window_agent) else None
        elif status >= 500:
            # 503 is "not now": the handler did not run. Any other 5xx may come after it did.
            fields["maybe_processed"] = status != 503
        if not 400 <= status < 600:
            message = f"unexpected HTTP status {status}"
        error = error_class(status, code)(message, **fields)
        error.attempts = self.attempts
        raise error

    def _typed(self, status: int, content: bytes) -> OutT:
        try:
            # Numbers as Decimal from their text: money never passes through a float.
            data = json.loads(content, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError):
            raise self._invalid(status, "answer is not JSON") from None
        if not isinstance(data, dict):
            raise self._invalid(status, f"answer is a JSON {type(data).__name__}, not an object")
        try:
            output = self.op.answer.model_validate(data)
        except ValidationError as exc:
            raise self._invalid(status, _describe(exc)) from None
        output._trace = self.span
        return output

    def _invalid(self, status: int | None, message: str) -> InvalidResponse:
        return InvalidResponse(
            message, tool=self.tool, status=status, code="invalid_response", trace=self.span
        )


class ClientCore:
    def __init__(
        self,
        config: GatewayConfig,
        keys: KeyRing | None = None,
        *,
        clock: Clock = time.monotonic,
        breakers: BreakerRegistry | None = None,
        on_charge: Callable[[Charge], None] | None = None,
        windows: RateWindows | None = None,
    ) -> None:
        self.config = config
        self.keys: KeyRing = keys if keys is not None else config.key_ring()
        self.admin_secret = self.keys.admin_key()
        self.breakers = breakers or BreakerRegistry(
            failure_threshold=config.breaker_failure_threshold,
            reset_s=config.breaker_reset_s,
            clock=clock,
        )
        self.windows = windows or RateWindows(clock)
        split = urlsplit(config.url)
        self.server_address = split.hostname or ""
        self.server_port = split.port or {"http": 80, "https": 443}.get(split.scheme)
        self._on_charge = on_charge
        self._backoff = wait_random_exponential(
            multiplier=config.backoff_initial_s, max=config.backoff_max_s
        )
        self._stop = stop_after_attempt(config.max_attempts)

    def start(
        self, op: Operation[OutT], *, idempotency_key: str | None, trace: TraceContext | None
    ) -> Exchange[OutT]:
        return Exchange(self, op, idempotency_key, trace)

    def url(self, exchange: Exchange[Any]) -> str:
        return self.config.url + exchange.target

    def report_charge(self, exchange: Exchange[Any], amount: Decimal) -> None:
        if self._on_charge is None:
            return
        charge = Charge(
            exchange.tool,
            exchange.op.agent_id,
            amount,
            exchange.span.trace_id,
            datetime.now(UTC),
            exchange.by_admin,
        )
        try:
            self._on_charge(charge)
        except Exception:  # a ledger failure must not turn a done call into a failed one
            log.exception("on_charge failed for %s", exchange.tool)

    def retrying_kwargs(self, exchange: Exchange[Any]) -> dict[str, Any]:
        """Arguments for a tenacity Retrying/AsyncRetrying running one exchange."""
        breaker = exchange.breaker

        def transient(exc: BaseException) -> bool:
            if isinstance(exc, CircuitOpen):
                return False
            if isinstance(exc, RateLimited):
                return exc.retry_after is not None and exc.retry_after <= (
                    self.config.retry_after_max_s
                )
            if isinstance(exc, Unavailable):
                if exc.maybe_processed and not exchange.resendable:
                    return False
                # Once the breaker has opened, a retry would only be refused.
                return not breaker.is_open()
            return False

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, RateLimited) and exc.retry_after is not None:
                return exc.retry_after
            return float(self._backoff(state))

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


R = TypeVar("R")


def replay_first(first: GatewayError, attempt: Callable[[Exchange[Any]], R]) -> Callable[..., R]:
    """``attempt``, except that its first call re-raises ``first`` (an attempt already made)."""
    pending = [first]

    def replayed(exchange: Exchange[Any]) -> R:
        if pending:
            raise pending.pop()
        return attempt(exchange)

    return replayed
