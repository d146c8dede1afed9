"""The wallet poll's reads: two per agent, thousands of agents at once, on one event loop.

Per agent: its wallet balance and its budget status (the rolling day's gateway
fees: the burn rate). Heartbeats bring everything else an agent measures;
only a poll can tell its wallet. Each agent's two reads go out with the key the
plan (:mod:`fleet.monitoring.plan`) chose for it: the admin key (not rate
limited) or the agent's own (its hourly window, shared with the agent's own
traffic). A 429 is a defect of the plan: it is counted, and so is a call our
client refused to send because the agent's window, as it last saw it, was full
(the client does not retry either: a retry would count against the window again).

The client is the gateway package's own :class:`~fleet.gateway.AsyncGatewayClient`
over its keep-alive pool, so the breaker per operation, the traceparent per
attempt, typed errors and the validation of every answer are the same as
everywhere else. :class:`SweepPoller` runs one client on a background event
loop per process; the pool bounds the calls in flight for the whole process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from fleet.gateway import (
    AsyncGatewayClient,
    Auth,
    BackgroundLoop,
    GatewayConfig,
    GatewayError,
    KeyRing,
    Operation,
    RateLimited,
    TraceContext,
    operations,
)
from fleet.gateway.schemas import BalanceResult, BudgetStatus


def wallet_operations(agent_id: str, *, via_admin: bool) -> tuple[Operation[Any], ...]:
    """The reads of one agent, in the order of a WalletReading's fields."""
    auth = Auth.ADMIN if via_admin else Auth.own(agent_id)
    return (
        operations.get_balance(agent_id, auth=auth),
        operations.get_budget(agent_id, auth=auth),
    )


# The operation names, for the gateway's counters.
SWEEP_OPERATIONS = tuple(op.name for op in wallet_operations("a", via_admin=True))
READS_PER_AGENT = len(SWEEP_OPERATIONS)


@dataclass(frozen=True, slots=True)
class WalletReading:
    """One agent's answers (None where the call failed), what went wrong, what it cost."""

    agent_id: str
    balance: BalanceResult | None
    budget: BudgetStatus | None
    errors: tuple[str, ...] = ()
    charged: Decimal = Decimal(0)  # the X-Charged of its calls
    rate_limited: int = 0  # 429s the gateway answered: the plan overran a window
    paced: int = 0  # calls our client held back, the window being full as it last saw it
    calls: int = 0  # requests that reached the gateway

    @property
    def failed(self) -> bool:
        return bool(self.errors)


def describe(name: str, exc: GatewayError) -> str:
    code = exc.code or type(exc).__name__
    status = f" {exc.status}" if exc.status else ""
    return f"{name}: {type(exc).__name__}{status} {code}"


@runtime_checkable
class BulkKeyRing(KeyRing, Protocol):
    """A ring that can hand over many agents' keys at once (one database read)."""

    def agent_keys(self, agent_ids: Sequence[str]) -> dict[str, str]: ...


class LentKeyRing:
    """A key ring over another one, holding the keys of the batches being polled, so a
    batch of thousands of own-key reads costs one key lookup, not one per call."""

    def __init__(self, base: KeyRing) -> None:
        self._base = base
        self._lent: dict[str, str] = {}
        self._lock = threading.Lock()

    def admin_key(self) -> str | None:
        return self._base.admin_key()

    def agent_key(self, agent_id: str) -> str | None:
        key = self._lent.get(agent_id)
        return key if key is not None else self._base.agent_key(agent_id)

    @contextmanager
    def lending(self, agent_ids: Sequence[str]) -> Iterator[None]:
        if not agent_ids or not isinstance(self._base, BulkKeyRing):
            yield
            return
        keys = self._base.agent_keys(agent_ids)
        with self._lock:
            self._lent.update(keys)
        try:
            yield
        finally:
            with self._lock:
                for agent_id in keys:
                    self._lent.pop(agent_id, None)

    def __repr__(self) -> str:
        return f"LentKeyRing({self._base!r}, lent={len(self._lent)})"


class SweepPoller:
    """Polls agents' wallets on a background loop; thread-safe, one per process."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        in_flight: int,
        timeout_s: float | None = None,
        keys: KeyRing | None = None,
    ) -> None:
        self.in_flight = in_flight
        config = dataclasses.replace(
            config,
            max_connections=in_flight,
            timeout_s=timeout_s if timeout_s is not None else config.timeout_s,
        )
        self.keys = LentKeyRing(keys if keys is not None else config.key_ring())
        self._loop = BackgroundLoop("sweep-loop")
        make: Callable[[], AsyncGatewayClient] = lambda: AsyncGatewayClient(config, self.keys)  # noqa: E731
        self.client = self._loop.build(make)

    def poll(self, agents: Sequence[tuple[str, bool]]) -> list[WalletReading]:
        """(agent id, through the admin key) pairs; their readings, in order."""
        own = [agent_id for agent_id, via_admin in agents if not via_admin]
        with self.keys.lending(own):
            return self._loop.run(self.poll_async(agents))

    async def poll_async(self, agents: Sequence[tuple[str, bool]]) -> list[WalletReading]:
        """Every agent's reads; an agent's calls go out together, agents in order."""
        k = READS_PER_AGENT
        ops = [op for a, via_admin in agents for op in wallet_operations(a, via_admin=via_admin)]
        answers: list[Any] = [None] * len(ops)
        traces = [TraceContext.new() for _ in agents]
        calls = iter(range(len(ops)))
        client = self.client

        async def worker() -> None:
            for i in calls:
                try:
                    answers[i] = await client.send(ops[i], trace=traces[i // k])
                except GatewayError as exc:
                    answers[i] = exc

        await asyncio.gather(*(worker() for _ in range(min(self.in_flight, len(ops)))))
        return [
            reading(agent_id, answers[k * j : k * j + k]) for j, (agent_id, _) in enumerate(agents)
        ]

    def close(self) -> None:
        if not self._loop.closed:
            self._loop.run(self.client.aclose())
        self._loop.stop()


def reading(agent_id: str, answers: Sequence[Any]) -> WalletReading:
    """An agent's reading from its answers (GatewayResult or GatewayError, in
    :data:`SWEEP_OPERATIONS` order)."""
    errors: list[str] = []
    values: list[Any] = []
    charged = Decimal(0)
    limited = paced = calls = 0
    for name, answer in zip(SWEEP_OPERATIONS, answers, strict=True):
        if isinstance(answer, GatewayError):
            errors.append(describe(name, answer))
            values.append(None)
            if isinstance(answer, RateLimited):
                paced += answer.paced
                limited += not answer.paced
            calls += answer.status is not None
        else:
            values.append(answer.value)
            charged += answer.charged or 0
            calls += 1
    return WalletReading(
        agent_id,
        values[0],
        values[1],
        tuple(errors),
        charged=charged,
        rate_limited=limited,
        paced=paced,
        calls=calls,
    )


__all__ = [
    "READS_PER_AGENT",
    "SWEEP_OPERATIONS",
    "BulkKeyRing",
    "LentKeyRing",
    "SweepPoller",
    "WalletReading",
    "reading",
    "wallet_operations",
]
