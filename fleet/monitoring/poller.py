"""The sweep's reads: four operations per agent, thousands of agents at once, on one event loop.

Per agent: its wallet balance, its budget status, and the latest self-reported
``p99_latency_ms`` and ``error_rate`` from the gateway's metrics API (the
gateway measures nothing per agent itself, so these are the agents' own
figures). All four go out with the operator's key (``Auth.operator``): only the
admin key may read every agent's wallet, and admin-scope calls are not rate
limited. The client is the gateway package's own
:class:`~fleet.gateway.AsyncGatewayClient` over its keep-alive pool, so the
breaker per operation, the retry ceiling, the traceparent per attempt, typed
errors and the validation of every answer are the same as everywhere else.

:class:`SweepPoller` runs one client on a background event loop per process;
the pool bounds the calls in flight for the whole process, so a worker running
several batches at once (threads pool) shares one set of connections and one
limit, and a batch stuck on a timed-out call holds one slot, not a core.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fleet.gateway import (
    AsyncGatewayClient,
    Auth,
    BackgroundLoop,
    GatewayConfig,
    GatewayError,
    KeyRing,
    Operation,
    TraceContext,
    operations,
)
from fleet.gateway.schemas import BalanceResult, BudgetStatus, MetricPoint, MetricSeries

P99, ERROR_RATE = "p99_latency_ms", "error_rate"


def sweep_operations(agent_id: str) -> tuple[Operation[Any], ...]:
    """The four reads of one agent, in the order of a Reading's fields."""
    auth = Auth.operator(agent_id)
    return (
        operations.get_balance(agent_id, auth=auth),
        operations.get_budget(agent_id, auth=auth),
        operations.query_metrics(agent_id, P99, limit=1, auth=auth),
        operations.query_metrics(agent_id, ERROR_RATE, limit=1, auth=auth),
    )


# The operation names, for the gateway's counters (query_metrics twice per agent).
SWEEP_OPERATIONS = tuple(op.name for op in sweep_operations("a"))
READS_PER_AGENT = len(SWEEP_OPERATIONS)
_LABELS = (
    "get_balance",
    "get_budget_status",
    f"query_metrics {P99}",
    f"query_metrics {ERROR_RATE}",
)


@dataclass(frozen=True, slots=True)
class Reading:
    """One agent's four answers (None where the call failed) and what went wrong."""

    agent_id: str
    balance: BalanceResult | None
    budget: BudgetStatus | None
    p99: MetricSeries | None
    error_rate: MetricSeries | None
    errors: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    @staticmethod
    def latest(series: MetricSeries | None) -> MetricPoint | None:
        return series.data[0] if series is not None and series.data else None


def describe(name: str, exc: GatewayError) -> str:
    code = exc.code or type(exc).__name__
    status = f" {exc.status}" if exc.status else ""
    return f"{name}: {type(exc).__name__}{status} {code}"


class SweepPoller:
    """Polls agents on a background loop; thread-safe, one per process."""

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
        self._loop = BackgroundLoop("sweep-loop")
        make: Callable[[], AsyncGatewayClient] = lambda: AsyncGatewayClient(config, keys)  # noqa: E731
        self.client = self._loop.build(make)

    def poll(self, agent_ids: Sequence[str]) -> list[Reading]:
        return self._loop.run(self.poll_async(agent_ids))

    async def poll_async(self, agent_ids: Sequence[str]) -> list[Reading]:
        """Every agent's four reads; an agent's calls go out together, agents in order."""
        n, k = len(agent_ids), READS_PER_AGENT
        ops = [op for a in agent_ids for op in sweep_operations(a)]
        answers: list[Any] = [None] * len(ops)
        traces = [TraceContext.new() for _ in range(n)]
        calls = iter(range(len(ops)))
        client = self.client

        async def worker() -> None:
            for i in calls:
                try:
                    answers[i] = await client.run(ops[i], trace=traces[i // k])
                except GatewayError as exc:
                    answers[i] = exc

        await asyncio.gather(*(worker() for _ in range(min(self.in_flight, len(ops)))))
        return [self._reading(agent_ids[j], answers[k * j : k * j + k]) for j in range(n)]

    @staticmethod
    def _reading(agent_id: str, answers: list[Any]) -> Reading:
        errors: list[str] = []
        out: list[Any] = []
        for name, answer in zip(_LABELS, answers, strict=True):
            if isinstance(answer, GatewayError):
                errors.append(describe(name, answer))
                out.append(None)
            else:
                out.append(answer)
        return Reading(agent_id, out[0], out[1], out[2], out[3], tuple(errors))

    def close(self) -> None:
        if not self._loop.closed:
            self._loop.run(self.client.aclose())
        self._loop.stop()


__all__ = ["READS_PER_AGENT", "SWEEP_OPERATIONS", "Reading", "SweepPoller", "sweep_operations"]
