"""What the benchmarks share: a work directory, bench data in bulk, CPU and memory
readings from /proc, and the bare client their limits are measured with."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson

from fleet.gateway import Operation
from fleet.gateway.wire import ConnectionPool, WireError

T = TypeVar("T")


@contextmanager
def workdir(keep: str | None, prefix: str) -> Iterator[Path]:
    """KEEP if given (left behind for a look at the logs), else a temporary directory
    removed after."""
    base = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=prefix))
    base.mkdir(parents=True, exist_ok=True)
    try:
        yield base
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def bench_manifest(agents: int, groups: int = 4, fleet: str = "bench") -> dict[str, Any]:
    per_group, rest = divmod(agents, groups)
    out = []
    for g in range(groups):
        count = per_group + (1 if g < rest else 0)
        if count:
            out.append(
                {
                    "id_prefix": f"seg{g}",
                    "count": count,
                    # Free and starter keys are what registration gives: no key to import.
                    "tier": "free" if g % 2 else "starter",
                    "initial_balance": "25.00",
                    "capabilities": ["support"],
                    "trust_claims": [{"type": "operator", "value": "bench"}],
                    "sla_template": "standard-support" if g % 2 == 0 else "premium-support",
                    "pricing": {"per_task": "0.02"},
                }
            )
    return {"fleet": fleet, "environment": "test", "agents": out}


def sessions_for(settings: Any) -> Any:
    from fleet.storage.db import engine_for, session_factory

    return session_factory(engine_for(settings.sqlalchemy_url))


def insert_bench_agents(
    sessions: Any,
    agent_ids: list[str],
    *,
    fleet: str,
    policy: Any,
    template: str = "standard-support",
    status: str = "active",
    keys: Mapping[str, str] | None = None,
    key_tier: str = "pro",
    secrets_key: str = "",
) -> None:
    """Agent rows and their contracts, in bulk (what provisioning would have left behind);
    with ``keys``, each agent's key encrypted as provisioning stores it, of ``key_tier``."""
    from fleet.secrets import KeyVault

    vault = KeyVault(secrets_key) if keys is not None else None
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from fleet.storage.db import write_connection
    from fleet.storage.records import Agent, SlaContract

    now = datetime.now(UTC)
    terms = policy.sla_templates[template].model_dump(mode="json")
    with write_connection(sessions) as conn:
        for start in range(0, len(agent_ids), 1000):
            chunk = agent_ids[start : start + 1000]
            conn.execute(
                insert(Agent),
                [
                    {
                        "agent_id": a,
                        "fleet": fleet,
                        "environment": "bench",
                        "id_prefix": a.split("-")[0],
                        "tier": "starter",
                        "capabilities": ["support"],
                        "sla_template": template,
                        "status": status,
                        "steps_done": [],
                        "traffic_weight": "1",
                        "extra": {"key": {"tier": key_tier}} if vault else {},
                        "api_key_encrypted": vault.encrypt(keys[a]) if vault and keys else None,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for a in chunk
                ],
            )
            conn.execute(
                insert(SlaContract),
                [
                    {
                        "sla_id": f"sla-{a}",
                        "agent_id": a,
                        "template": template,
                        "terms": terms,
                        "created_at": now,
                    }
                    for a in chunk
                ],
            )


def celery_sender(app: Any) -> Any:
    def send(messages: Any) -> None:
        with app.producer_or_acquire() as producer:
            for name, kwargs in messages:
                app.send_task(name, kwargs=kwargs, producer=producer, ignore_result=True)

    return send


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children (Linux /proc), so a
    benchmark can say where the machine's time went even on a noisy host."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in a process group (a worker and its pool), in MB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) != pgid:  # field 5: pgrp
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1024


def group_cpu_s(pgid: int) -> float:
    """User + system CPU of every live process in a process group (a worker and its pool)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) == pgid:
                total += int(stat[11]) + int(stat[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def run_fast(coro: Coroutine[Any, Any, T]) -> T:
    """Run a limit on uvloop when it is installed: the limit is the fastest client we have."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


# What a limit sends for one agent: phases in order, the operations of a phase together.
Phases = Sequence[Sequence[Operation[Any]]]


@dataclass(frozen=True)
class LimitRun:
    seconds: float
    calls: int
    failed: int


def encoded_request(
    pool: ConnectionPool,
    op: Operation[Any],
    admin_key: str,
    agent_keys: Mapping[str, str] | None = None,
) -> tuple[bytes, dict[str, str], bytes]:
    """The request line, headers and body of ``op`` as the bare client sends it: the agent's
    own key on an own-key operation (from ``agent_keys``), the admin key on every other
    authenticated call."""
    headers: dict[str, str] = {}
    if op.auth.kind == "own" and agent_keys is not None and op.auth.agent_id is not None:
        headers["Authorization"] = f"Bearer {agent_keys[op.auth.agent_id]}"
    elif op.auth.kind != "none":
        headers["Authorization"] = f"Bearer {admin_key}"
    body = b""
    if op.body is not None:
        body = orjson.dumps(op.body)
        headers["Content-Type"] = "application/json"
    if op.moves_money:
        headers["Idempotency-Key"] = uuid.uuid4().hex
    target = op.path + (f"?{urlencode(op.query)}" if op.query else "")
    return pool.head(op.method, target), headers, body


def bare_client_limit(
    url: str,
    admin_key: str,
    units: Sequence[Phases],
    concurrency: int,
    timeout_s: float = 30.0,
    agent_keys: Mapping[str, str] | None = None,
) -> LimitRun:
    """The limit: the same REST calls sent by a bare asyncio client over the gateway package's
    keep-alive pool (:class:`fleet.gateway.wire.ConnectionPool`), requests pre-encoded,
    ``concurrency`` units in flight, on uvloop when installed.

    A unit is what the system under test does for one agent (or one call): its phases in
    order, the operations of a phase sent together. A failed call (a status of 400 or more,
    no answer) is counted, not retried, and its answer is parsed like any other.
    """
    failed = 0

    async def run() -> tuple[float, int]:
        nonlocal failed
        pool = ConnectionPool(url, limit=concurrency, connect_timeout_s=min(timeout_s, 5.0))
        encoded = [
            [[encoded_request(pool, op, admin_key, agent_keys) for op in phase] for phase in unit]
            for unit in units
        ]

        async def call(head: bytes, headers: dict[str, str], body: bytes) -> None:
            nonlocal failed
            try:
                answer = await pool.send(head, headers, body, timeout_s)
                orjson.loads(answer.content)
                failed += answer.status_code >= 400
            except (WireError, orjson.JSONDecodeError):
                failed += 1

        todo = iter(encoded)

        async def worker() -> None:
            for unit in todo:
                for phase in unit:
                    if len(phase) == 1:
                        await call(*phase[0])
                    else:
                        await asyncio.gather(*(call(*request) for request in phase))

        try:
            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(encoded)))))
            seconds = time.perf_counter() - started
        finally:
            await pool.close()
        return seconds, sum(len(phase) for unit in encoded for phase in unit)

    seconds, calls = run_fast(run())
    return LimitRun(seconds, calls, failed)


def seeded_ids(sandbox: Any, agents: int, prefix: str, **options: Any) -> list[str]:
    """Seed AGENTS agents in the sandbox (in chunks it lists in full); their ids."""
    ids: list[str] = []
    while len(ids) < agents:
        made = sandbox.seed(min(20_000, agents - len(ids)), prefix=prefix, **options)
        ids.extend(a["agent_id"] for a in made["agents"])
    return ids


def seeded_keys(sandbox: Any, agents: int, prefix: str, **options: Any) -> dict[str, str]:
    """Seed AGENTS agents in the sandbox (in chunks it lists in full); their keys by id."""
    keys: dict[str, str] = {}
    while len(keys) < agents:
        made = sandbox.seed(min(20_000, agents - len(keys)), prefix=prefix, **options)
        keys.update((a["agent_id"], a["api_key"]) for a in made["agents"])
    return keys


def limit_fields(measured_s: float, limit_s: float) -> dict[str, float]:
    """The last JSON line's limit and ratio (how many times the limit the system took)."""
    return {"limit_s": round(limit_s, 3), "ratio": round(measured_s / limit_s, 2)}


def limit_line(limit: LimitRun, measured_s: float, what: str) -> str:
    return (
        f"limit ({what}): {limit.calls} calls in {limit.seconds:.2f} s, {limit.failed} failed "
        f"| ratio {measured_s / limit.seconds:.2f}"
    )
