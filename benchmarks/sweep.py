"""`fleet bench sweep`: monitoring sweeps through the metrics queue, each against the limit.

Sweep time is from sending the tick to the sweep's record saying the last
snapshot and the fleet aggregate are stored. The limit is a bare asyncio
poller making the same 4·N calls at the same concurrency, in this process,
with each client (the sweep's keep-alive pool, a bare aiohttp session): the
faster of the two.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import click

from benchmarks.common import (
    group_cpu_s,
    group_rss_mb,
    insert_bench_agents,
    run_fast,
    sessions_for,
    workdir,
)


def sweep_limit(
    url: str,
    admin_key: str,
    agent_ids: list[str],
    concurrency: int,
    timeout_s: float = 5.0,
    client: str = "wire",
) -> float:
    """The limit: a bare asyncio poller (uvloop, bodies pre-encoded) making the sweep's 4·N calls
    at the same concurrency, once each (a failed call is not retried); seconds for all.

    ``client`` is the HTTP client: ``wire`` (the keep-alive pool the sweep itself uses, the
    fastest measured) or ``aiohttp`` (a bare aiohttp session).
    """
    import asyncio

    import aiohttp
    import orjson

    from fleet.gateway.wire import ConnectionPool, WireError
    from fleet.monitoring.poller import SWEEP_TOOLS

    headers = {"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"}
    bodies = [
        orjson.dumps({"tool": t, "input": {"agent_id": a}}) for a in agent_ids for t in SWEEP_TOOLS
    ]
    workers = min(concurrency, len(bodies))

    async def run_wire() -> float:
        pool = ConnectionPool(url, limit=concurrency, connect_timeout_s=timeout_s)
        calls = iter(bodies)

        async def worker() -> None:
            for body in calls:
                try:
                    orjson.loads((await pool.post(body, headers, timeout_s)).content)
                except (WireError, orjson.JSONDecodeError):
                    pass  # under injected faults: the limit does not retry

        try:
            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(workers)))
            return time.perf_counter() - started
        finally:
            await pool.close()

    async def run_aiohttp() -> float:
        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
        async with aiohttp.ClientSession(
            headers=headers,
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as session:
            calls = iter(bodies)

            async def worker() -> None:
                for body in calls:
                    try:
                        async with session.post(url, data=body) as response:
                            orjson.loads(await response.read())
                    except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
                        pass

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(workers)))
            return time.perf_counter() - started

    return run_fast(run_wire() if client == "wire" else run_aiohttp())


def _wait_sweep(r: Any, tick: str, timeout_s: float) -> dict[str, Any]:
    from fleet.monitoring.sweep import recent_sweeps, sweep_status

    deadline = time.monotonic() + timeout_s
    while True:
        for sweep_id in recent_sweeps(r, 5):
            status = sweep_status(r, sweep_id)
            if (
                status
                and status.get("tick") == tick
                and status.get("status") in ("finished", "incomplete")
            ):
                return status
        if time.monotonic() > deadline:
            raise click.ClickException(f"sweep {tick} not finished after {timeout_s:.0f} s")
        time.sleep(0.02)


def run(
    agents: int,
    latency_ms: float,
    sweeps: int,
    workers: int,
    pool: str,
    concurrency: int,
    batch_size: int | None,
    in_flight: int | None,
    error_rate: float,
    timeout_rate: float,
    with_limit: bool,
    keep: str | None,
) -> None:
    from config.settings import MetricsSettings
    from fleet.hotstate import connect
    from stack.local import local_stack

    defaults = MetricsSettings()
    metrics = {
        "batch_size": batch_size or defaults.batch_size,
        "in_flight": in_flight or defaults.in_flight,
    }
    processes = workers * (concurrency if pool == "prefork" else 1)
    total_in_flight = processes * metrics["in_flight"]
    # The sweep's deadline (0.9 × interval) must not cut a large fleet's sweep short.
    interval = max(60.0, agents / 1000 * 1.5)
    with workdir(keep, "fleet-bench-sweep-") as base:
        with local_stack(
            base,
            latency_ms=latency_ms,
            jitter_ms=latency_ms / 5,
            metrics=metrics,
            schedule={"metrics_sweep_s": interval},
        ) as stack:
            sandbox = stack.sandbox()
            ids: list[str] = []
            while len(ids) < agents:
                ids.extend(sandbox.seed(min(20000, agents - len(ids)), prefix="bench")["agent_ids"])
            insert_bench_agents(
                sessions_for(stack.settings), ids, fleet="bench", policy=stack.settings.policy
            )
            children = [
                stack.start_worker(
                    ["metrics"],
                    concurrency=concurrency,
                    pool=pool,
                    name=f"metrics-{i}",
                    extra_env={"FLEET_WORKER__PREFETCH_MULTIPLIER": "1"},
                )
                for i in range(workers)
            ]
            if error_rate or timeout_rate:
                # Unanswered calls are held well past the sweep's per-call timeout, then dropped.
                sandbox.set_faults(error_rate=error_rate, timeout_rate=timeout_rate, timeout_s=30)
                click.echo(
                    f"gateway faults: {error_rate:.0%} of calls fail, {timeout_rate:.0%} time out"
                )
            app, r = stack.celery(), connect(stack.settings.redis_url)
            click.echo(
                f"sweeping {agents} agents at {latency_ms:.0f} ms gateway latency: {workers} "
                "metrics worker(s), "
                f"{pool} × {concurrency}, {metrics['batch_size']} agents per message, "
                f"{metrics['in_flight']} calls in flight per process ({total_in_flight} in all)"
            )
            runs = []
            for n in range(sweeps):
                tick = f"bench-{n + 1}"
                cpu_before = {c.name: group_cpu_s(c.process.pid) for c in stack.sup.children}
                started = time.time()
                app.send_task("metrics.sweep", kwargs={"tick": tick})
                status = _wait_sweep(r, tick, timeout_s=max(120.0, agents / 100))
                sweep_s = float(status["finished_at"]) - started
                cpu = {
                    c.name: group_cpu_s(c.process.pid) - cpu_before[c.name]
                    for c in stack.sup.children
                }
                rss = sum(group_rss_mb(c.process.pid) for c in children)
                limits = {}
                for client in ("wire", "aiohttp") if with_limit else ():
                    own_before = time.process_time()
                    limits[client] = sweep_limit(
                        stack.settings.gateway_url,
                        stack.settings.gateway.admin_key.get_secret_value(),
                        ids,
                        total_in_flight,
                        stack.settings.metrics.poll_timeout_s,
                        client,
                    )
                    cpu[f"limit {client}"] = time.process_time() - own_before
                limit_s = min(limits.values(), default=float("nan"))
                runs.append(
                    {
                        "sweep_s": sweep_s,
                        "limit_s": limit_s,
                        "rss_mb": rss,
                        "unknown": status["unknown"],
                        "batches": status["batches"],
                    }
                )
                against = (
                    (
                        f"limit {limit_s:.2f} s ("
                        + ", ".join(f"{k} {v:.2f}" for k, v in limits.items())
                        + f") | ratio {sweep_s / limit_s:.2f} | "
                    )
                    if limits
                    else ""
                )
                click.echo(
                    f"sweep {n + 1}: {sweep_s:.2f} s ({agents / sweep_s:,.0f} agents/s, "
                    f"{status['batches']} messages, "
                    f"{status['unknown']} unknown) | {against}"
                    f"worker RSS {rss:.0f} MB | CPU s: "
                    + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
                )
            sweep_med = statistics.median(x["sweep_s"] for x in runs)
            limit_med = statistics.median(x["limit_s"] for x in runs) if with_limit else None
            click.echo(
                f"median: sweep {sweep_med:.2f} s ({agents / sweep_med:,.0f} agents/s), "
                + (
                    f"limit {limit_med:.2f} s, ratio {sweep_med / limit_med:.2f}; "
                    if limit_med
                    else ""
                )
                + "worker RSS by sweep: "
                + ", ".join(f"{x['rss_mb']:.0f}" for x in runs)
                + " MB"
            )
            click.echo(
                json.dumps(
                    {
                        "agents": agents,
                        "sweep_s": round(sweep_med, 2),
                        "limit_s": round(limit_med, 2) if limit_med else None,
                        "ratio": round(sweep_med / limit_med, 2) if limit_med else None,
                    }
                )
            )
