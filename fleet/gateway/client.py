"""The gateway clients: :class:`GatewayClient` (sync) and :class:`AsyncGatewayClient`.

Both run :class:`~fleet.gateway.operations.Operation` s against the gateway's
REST routes, with the key the operation's Auth resolves to, retry transient
failures up to ``max_attempts`` in total, keep a circuit breaker per
operation, send a W3C ``traceparent`` with a new span per attempt, pace each
agent's hourly window, and report ``X-Charged``. The logic lives in
:mod:`fleet.gateway._core`; the classes here only move bytes.

Most calls succeed at once, so the first attempt is made directly and the
tenacity machinery (a large share of the client's own CPU per call)
is only built when it fails; tenacity then judges that failure as attempt 1
and decides everything after it, so there is still one retry policy.

Two ways to call, on either client:

- ``run(operations.get_balance(agent_id))`` -> ``BalanceResult`` (typed, validated);
- ``send(...)`` -> :class:`GatewayResult` (the answer plus charge, rate window, trace).

The async client sends over :class:`~fleet.gateway.wire.ConnectionPool`
(keep-alive connections parsed by httptools) unless given an httpx
transport: httpx's own async transport costs several times its CPU per
request and collapses past a few dozen concurrent connections, and the
sweep's thousands of reads per minute need the pool (README, "Performance").
Use one async client per event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import httpx
from tenacity import AsyncRetrying, Retrying

from fleet.gateway._core import (
    TRANSPORT_ERRORS,
    Charge,
    ClientCore,
    Exchange,
    GatewayConfig,
    GatewayResult,
    OutT,
    RateWindows,
    replay_first,
)
from fleet.gateway.breaker import BreakerRegistry, Clock
from fleet.gateway.errors import GatewayError
from fleet.gateway.keys import KeyRing
from fleet.gateway.operations import Operation
from fleet.gateway.tracing import TraceContext
from fleet.gateway.wire import ConnectionPool, WireError

if TYPE_CHECKING:
    from config.settings import Settings

_FAILURES: tuple[type[BaseException], ...] = (*TRANSPORT_ERRORS, WireError)


class _ClientBase:
    def __init__(
        self,
        config: GatewayConfig,
        keys: KeyRing | None,
        *,
        clock: Clock,
        breakers: BreakerRegistry | None,
        on_charge: Callable[[Charge], None] | None,
        windows: RateWindows | None,
    ) -> None:
        self._core = ClientCore(
            config, keys, clock=clock, breakers=breakers, on_charge=on_charge, windows=windows
        )

    @property
    def config(self) -> GatewayConfig:
        return self._core.config

    @property
    def keys(self) -> KeyRing:
        return self._core.keys

    @property
    def breakers(self) -> BreakerRegistry:
        """The per-operation breakers, created on first use (for dashboards and metrics)."""
        return self._core.breakers

    @property
    def windows(self) -> RateWindows:
        """The per-agent hourly windows as this client has seen them."""
        return self._core.windows

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._core.describe()})"


class GatewayClient(_ClientBase):
    """Blocking client; safe to share between threads."""

    def __init__(
        self,
        config: GatewayConfig,
        keys: KeyRing | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Clock = time.monotonic,
        breakers: BreakerRegistry | None = None,
        on_charge: Callable[[Charge], None] | None = None,
        windows: RateWindows | None = None,
    ) -> None:
        super().__init__(
            config, keys, clock=clock, breakers=breakers, on_charge=on_charge, windows=windows
        )
        self._sleep = sleep
        self._http = httpx.Client(transport=transport, timeout=config.timeout, limits=config.limits)

    @classmethod
    def from_settings(cls, settings: Settings, keys: KeyRing | None = None, **kwargs: Any) -> Self:
        return cls(GatewayConfig.from_settings(settings), keys, **kwargs)

    def send(
        self,
        op: Operation[OutT],
        *,
        idempotency_key: str | None = None,
        trace: TraceContext | None = None,
    ) -> GatewayResult[OutT]:
        exchange = self._core.start(op, idempotency_key=idempotency_key, trace=trace)
        try:
            return self._attempt(exchange)
        except GatewayError as exc:
            first = exc
        retrying = Retrying(sleep=self._sleep, **self._core.retrying_kwargs(exchange))
        result: GatewayResult[OutT] = retrying(replay_first(first, self._attempt), exchange)
        return result

    def run(
        self,
        op: Operation[OutT],
        *,
        idempotency_key: str | None = None,
        trace: TraceContext | None = None,
    ) -> OutT:
        return self.send(op, idempotency_key=idempotency_key, trace=trace).value

    def _attempt(self, exchange: Exchange[OutT]) -> GatewayResult[OutT]:
        while True:
            headers = exchange.begin_attempt()
            try:
                response = self._http.request(
                    exchange.op.method,
                    self._core.url(exchange),
                    content=exchange.content,
                    headers=headers,
                )
            except TRANSPORT_ERRORS as exc:
                if exchange.resend_after_drop(exc):
                    continue
                raise exchange.transport_failed(exc) from exc
            except BaseException:
                exchange.abandoned()
                raise
            return exchange.answered(response.status_code, response.headers, response.content)

    def run_many(self, ops: Sequence[Operation[Any]]) -> list[Any]:
        """The operations one after another (this client has no loop to overlap them
        on); each item is the typed answer or the GatewayError it ended with."""
        results: list[Any] = []
        for op in ops:
            try:
                results.append(self.run(op))
            except GatewayError as exc:
                results.append(exc)
        return results

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncGatewayClient(_ClientBase):
    """Asyncio client for high fan-out; one per event loop (create it on that loop)."""

    def __init__(
        self,
        config: GatewayConfig,
        keys: KeyRing | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Clock = time.monotonic,
        breakers: BreakerRegistry | None = None,
        on_charge: Callable[[Charge], None] | None = None,
        windows: RateWindows | None = None,
    ) -> None:
        super().__init__(
            config, keys, clock=clock, breakers=breakers, on_charge=on_charge, windows=windows
        )
        self._sleep = sleep
        self._http: httpx.AsyncClient | None = None
        self._pool: ConnectionPool | None = None
        if transport is not None:
            self._http = httpx.AsyncClient(
                transport=transport, timeout=config.timeout, limits=config.limits
            )
        else:
            self._pool = ConnectionPool(
                config.url,
                limit=config.max_connections,
                connect_timeout_s=config.connect_timeout_s,
                keepalive_s=config.keepalive_s,
                max_header_bytes=config.max_response_header_bytes,
                max_body_bytes=config.max_response_body_bytes,
            )

    @classmethod
    def from_settings(cls, settings: Settings, keys: KeyRing | None = None, **kwargs: Any) -> Self:
        return cls(GatewayConfig.from_settings(settings), keys, **kwargs)

    async def send(
        self,
        op: Operation[OutT],
        *,
        idempotency_key: str | None = None,
        trace: TraceContext | None = None,
    ) -> GatewayResult[OutT]:
        exchange = self._core.start(op, idempotency_key=idempotency_key, trace=trace)
        try:
            return await self._attempt(exchange)
        except GatewayError as exc:
            first = exc
        retrying = AsyncRetrying(sleep=self._sleep, **self._core.retrying_kwargs(exchange))
        pending = [first]

        async def attempt(ex: Exchange[OutT]) -> GatewayResult[OutT]:
            if pending:
                raise pending.pop()
            return await self._attempt(ex)

        result: GatewayResult[OutT] = await retrying(attempt, exchange)
        return result

    async def run(
        self,
        op: Operation[OutT],
        *,
        idempotency_key: str | None = None,
        trace: TraceContext | None = None,
    ) -> OutT:
        return (await self.send(op, idempotency_key=idempotency_key, trace=trace)).value

    async def _request(
        self, exchange: Exchange[Any], headers: dict[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]:
        if self._pool is not None:
            pool = self._pool
            answer = await pool.send(
                pool.head(exchange.op.method, exchange.target),
                headers,
                exchange.content,
                self.config.timeout_s,
            )
            return answer.status_code, answer.headers, answer.content
        assert self._http is not None
        response = await self._http.request(
            exchange.op.method, self._core.url(exchange), content=exchange.content, headers=headers
        )
        return response.status_code, response.headers, response.content

    async def _attempt(self, exchange: Exchange[OutT]) -> GatewayResult[OutT]:
        while True:
            headers = exchange.begin_attempt()
            try:
                status, answer_headers, content = await self._request(exchange, headers)
            except _FAILURES as exc:
                if exchange.resend_after_drop(exc):
                    continue
                raise exchange.transport_failed(exc) from exc
            except BaseException:
                exchange.abandoned()
                raise
            return exchange.answered(status, answer_headers, content)

    async def run_many(self, ops: Sequence[Operation[Any]]) -> list[Any]:
        """Independent operations concurrently; each item is the typed answer or the
        GatewayError that operation ended with."""
        return await asyncio.gather(*(self.run(op) for op in ops), return_exceptions=True)

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


__all__ = ["AsyncGatewayClient", "GatewayClient", "GatewayConfig", "GatewayResult"]
