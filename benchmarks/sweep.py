"""`fleet bench sweep`: monitoring sweeps through the metrics queue, each against the limit.

Sweep time is from sending the tick to the sweep's record saying the last
snapshot and the fleet aggregate are stored. The limit, measured after each
sweep, is a bare asyncio poller in this process making the same 4·N REST reads
(get_balance, get_budget, query_metrics twice; admin key) over the gateway
package's keep-alive pool at the same number of calls in flight.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import click

from benchmarks.common import (
    LimitRun,
    bare_client_limit,
    group_cpu_s,
    group_rss_mb,
    insert_bench_agents,
    limit_fields,
    seeded_ids,
    sessions_for,
    workdir,
)


def sweep_limit(
    url: str, admin_key: str, agent_ids: list[str], concurrency: int, timeout_s: float = 5.0
) -> LimitRun:
    """The limit: the sweep's REST reads (:data:`~fleet.monitoring.poller.SWEEP_OPERATIONS`
    per agent, admin key) from a bare asyncio poller over the gateway package's keep-alive
    pool, ``concurrency`` calls in flight, once each (a failed call is not retried)."""
    from fleet.monitoring.poller import wallet_operations

    calls = [[[op]] for a in agent_ids for op in wallet_operations(a, via_admin=True)]
    return bare_client_limit(url, admin_key, calls, concurrency, timeout_s)


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
            ids = seeded_ids(sandbox, agents, "bench")
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
                limit: LimitRun | None = None
                if with_limit:
                    own_before = time.process_time()
                    limit = sweep_limit(
                        stack.settings.gateway_url,
                        stack.settings.gateway.admin_key.get_secret_value(),
                        ids,
                        total_in_flight,
                        stack.settings.metrics.poll_timeout_s,
                    )
                    cpu["limit"] = time.process_time() - own_before
                limit_s = limit.seconds if limit else float("nan")
                runs.append(
                    {
                        "sweep_s": sweep_s,
                        "limit_s": limit_s,
                        "rss_mb": rss,
                        "unknown": status["failed"],
                        "batches": status["batches"],
                    }
                )
                against = (
                    f"limit {limit_s:.2f} s ({limit.calls} calls, {limit.failed} failed) "
                    f"| ratio {sweep_s / limit_s:.2f} | "
                    if limit
                    else ""
                )
                click.echo(
                    f"sweep {n + 1}: {sweep_s:.2f} s ({agents / sweep_s:,.0f} agents/s, "
                    f"{status['batches']} messages, "
                    f"{status['failed']} failed) | {against}"
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
                        "in_flight": total_in_flight,
                        **(
                            limit_fields(sweep_med, limit_med)
                            if limit_med
                            else {"limit_s": None, "ratio": None}
                        ),
                    }
                )
            )
