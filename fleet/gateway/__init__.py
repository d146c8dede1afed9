"""The gateway client: the only code in the project that talks to the gateway.

    from fleet.gateway import Auth, GatewayClient, StaticKeyRing, operations

    keys = StaticKeyRing(admin_key, {agent_id: agent_key})
    with GatewayClient.from_settings(settings, keys) as gateway:
        gateway.run(operations.register(agent_id))
        balance = gateway.run(operations.get_balance(agent_id)).balance

Domain code types its dependencies against :class:`Gateway` (blocking) or
:class:`AsyncGateway`, not against a client class. See
:mod:`fleet.gateway.operations` for the catalogue, :mod:`fleet.gateway.keys`
for which key a call uses and :mod:`fleet.gateway.errors` for what can go wrong.

* ``GatewayClient(config, keys=None, *, transport, sleep, clock, breakers,
  on_charge, windows)``; ``AsyncGatewayClient`` takes the same with an httpx
  async transport, and without one sends over the package's keep-alive pool
  (:mod:`fleet.gateway.wire`). ``keys`` defaults to
  ``StaticKeyRing(config.admin_key)``. Every client has ``from_settings(settings,
  keys=None, **kw)`` and ``run_many(ops)`` (sequential on the blocking client,
  concurrent on the async and loop ones; each item is the answer or the error).
* :class:`LoopGatewayClient` is the thread-safe blocking client on a
  :class:`BackgroundLoop`.
* ``Charge.by_admin``: the admin key made the call, so the admin's wallet paid
  (the gateway charges the caller); ``Charge.agent_id`` is the agent the
  operation concerns, None for fleet-wide reads.
* ``Auth.ANY`` without an admin key uses the key of the agent the operation is
  about, else any agent's key if the ring has ``any_agent()``.
* ``RateLimited.paced`` is True when the client refused without sending;
  ``retry_after`` is then, as on a real 429, the wait until our own sliding
  window frees a slot. The retry ceiling retries a RateLimited only when that
  wait is at most ``retry_after_max_s``.
* Money arguments refuse floats and more than 2 decimal places before any
  request; operations that move money carry an Idempotency-Key. Metric values
  go out as JSON numbers (the gateway's submit route refuses decimal strings).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from fleet.gateway import operations
from fleet.gateway._core import Charge, GatewayConfig, GatewayResult, OutT, RateWindow
from fleet.gateway.breaker import BreakerRegistry, BreakerState, CircuitBreaker
from fleet.gateway.client import AsyncGatewayClient, GatewayClient
from fleet.gateway.errors import (
    AdminOnly,
    AlreadyExists,
    AuthError,
    BadInput,
    BudgetExceeded,
    CircuitOpen,
    ConfirmationRequired,
    Conflict,
    DepositLimitExceeded,
    Forbidden,
    GatewayError,
    Gone,
    IdempotencyKeyReused,
    InsufficientBalance,
    InsufficientTier,
    InvalidResponse,
    MissingKey,
    NotFound,
    PaymentRequired,
    RateLimited,
    Unavailable,
    WalletFrozen,
)
from fleet.gateway.keys import Auth, KeyRing, StaticKeyRing
from fleet.gateway.loop import BackgroundLoop, LoopGatewayClient
from fleet.gateway.operations import Operation
from fleet.gateway.tracing import TraceContext


class Gateway(Protocol):
    """A blocking gateway client (GatewayClient, LoopGatewayClient)."""

    def send(
        self,
        op: Operation[OutT],
        *,
        idempotency_key: str | None = None,
        trace: TraceContext | None = None,
    ) -> GatewayResult[OutT]: ...

    def run(
        self,
        op: Operation[OutT],
        *,
        idempotency_key: str | None = None,
        trace: TraceContext | None = None,
    ) -> OutT: ...

    def run_many(self, ops: Sequence[Operation[Any]]) -> list[Any]: ...


class AsyncGateway(Protocol):
    """An asyncio gateway client (AsyncGatewayClient)."""

    async def send(
        self,
        op: Operation[OutT],
        *,
        idempotency_key: str | None = None,
        trace: TraceContext | None = None,
    ) -> GatewayResult[OutT]: ...

    async def run(
        self,
        op: Operation[OutT],
        *,
        idempotency_key: str | None = None,
        trace: TraceContext | None = None,
    ) -> OutT: ...

    async def run_many(self, ops: Sequence[Operation[Any]]) -> list[Any]: ...


__all__ = [
    "AdminOnly",
    "AlreadyExists",
    "AsyncGateway",
    "AsyncGatewayClient",
    "Auth",
    "AuthError",
    "BackgroundLoop",
    "BadInput",
    "BreakerRegistry",
    "BreakerState",
    "BudgetExceeded",
    "Charge",
    "CircuitBreaker",
    "CircuitOpen",
    "ConfirmationRequired",
    "Conflict",
    "DepositLimitExceeded",
    "Forbidden",
    "Gateway",
    "GatewayClient",
    "GatewayConfig",
    "GatewayError",
    "GatewayResult",
    "Gone",
    "IdempotencyKeyReused",
    "InsufficientBalance",
    "InsufficientTier",
    "InvalidResponse",
    "KeyRing",
    "LoopGatewayClient",
    "MissingKey",
    "NotFound",
    "Operation",
    "PaymentRequired",
    "RateLimited",
    "RateWindow",
    "StaticKeyRing",
    "TraceContext",
    "Unavailable",
    "WalletFrozen",
    "operations",
]
