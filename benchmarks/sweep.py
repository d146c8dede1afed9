"""`fleet bench sweep`: the wallet poll through the metrics queue, on its plan, against
the limit.

The fleet is AGENTS sandbox agents we hold a key of ``--tier`` for (pro by default), the
plan's period one sweep tick, so every sweep must read every agent's wallet. With
``--keys own`` (the default) the admin key takes no wallet read: each agent is read on
its own window, which the sandbox enforces as the gateway does (real-gateway.md §9), so
any 429 is the plan's defect and counted. Sweep time is from sending the tick to the
sweep's record saying the last batch is stored; then every agent's snapshot is checked
for a wallet read inside the sweep. The limit, measured after each sweep, is a bare
asyncio client in this process making the same 2·N REST reads with the same keys over
the gateway package's keep-alive pool at the same number of calls in flight.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import click

from benchmarks.common import (
    LimitRun,
    bare_client_limit,
    group_cpu_s,
    group_rss_mb,
    insert_bench_agents,
    limit_fields,
    seeded_keys,
    sessions_for,
    workdir,
)


def sweep_limit(
    url: str,
    admin_key: str,
    agents: list[tuple[str, bool]],
    agent_keys: dict[str, str],
    concurrency: int,
    timeout_s: float = 5.0,
) -> LimitRun:
    """The limit: the wallet poll's reads (:func:`~fleet.monitoring.poller.wallet_operations`
    per agent, through the key the plan chose) from a bare asyncio client over the gateway
    package's keep-alive pool, ``concurrency`` calls in flight, once each (a failed call is
    not retried)."""
    from fleet.monitoring.poller import wallet_operations

    calls = [[[op]] for a, admin in agents for op in wallet_operations(a, via_admin=admin)]
    return bare_client_limit(url, admin_key, calls, concurrency, timeout_s, agent_keys)


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


def read_since(r: Any, agent_ids: list[str], since: float) -> int:
    """How many of the agents' snapshots hold a wallet read at or after ``since``."""
    from fleet.monitoring.snapshot import snapshot_key

    covered = 0
    for start in range(0, len(agent_ids), 5000):
        pipe = r.pipeline(transaction=False)
        for agent_id in agent_ids[start : start + 5000]:
            pipe.hget(snapshot_key(agent_id), "wallet_read_at")
        covered += sum(1 for v in pipe.execute() if v is not None and float(v) >= since)
    return covered


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
    *,
    tier: str = "pro",
    keys: str = "own",
) -> None:
    from config.settings import DEFAULT_POLICY_FILE, MetricsSettings
    from fleet.hotstate import connect
    from fleet.monitoring.sweep import last_plan
    from stack.local import local_stack

    defaults = MetricsSettings()
    metrics = {
        "batch_size": batch_size or defaults.batch_size,
        "in_flight": in_flight or defaults.in_flight,
    }
    processes = workers * (concurrency if pool == "prefork" else 1)
    total_in_flight = processes * metrics["in_flight"]
    # The period is one tick, long enough for the sandbox to answer the whole fleet on a
    # shared two-core box (6 ms per agent).
    period = max(60.0, agents / 1000 * 6)
    with workdir(keep, "fleet-bench-sweep-") as base:
        policy = Path(base) / "policy.yaml"
        policy.write_text(
            f"extends: {DEFAULT_POLICY_FILE.resolve()}\n"
            "monitoring:\n"
            f"  wallet_period_s: {period}\n"
            f"  admin_calls_per_s: {0 if keys == 'own' else agents * 2 / period + 1:.3f}\n"
        )
        with local_stack(
            base,
            latency_ms=latency_ms,
            jitter_ms=latency_ms / 5,
            policy_file=policy,
            metrics=metrics,
            schedule={"metrics_sweep_s": period},
        ) as stack:
            sandbox = stack.sandbox()
            agent_keys = seeded_keys(sandbox, agents, "bench", tier=tier)
            ids = sorted(agent_keys)
            insert_bench_agents(
                sessions_for(stack.settings),
                ids,
                fleet="bench",
                policy=stack.settings.policy,
                keys=agent_keys,
                key_tier=tier,
                secrets_key=stack.settings.secrets_key.get_secret_value(),
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
                f"polling {agents} wallets ({tier} keys, through {keys} keys) every "
                f"{period:.0f} s at {latency_ms:.0f} ms gateway latency: {workers} metrics "
                f"worker(s), {pool} × {concurrency}, {metrics['batch_size']} agents per "
                f"message, {metrics['in_flight']} calls in flight per process "
                f"({total_in_flight} in all)"
            )
            runs = []
            for n in range(sweeps):
                tick = f"bench-{n + 1}"
                cpu_before = {c.name: group_cpu_s(c.process.pid) for c in stack.sup.children}
                sandbox.reset_counters()
                started = time.time()
                app.send_task("metrics.sweep", kwargs={"tick": tick})
                status = _wait_sweep(r, tick, timeout_s=max(120.0, agents / 100))
                sweep_s = float(status["finished_at"]) - started
                cpu = {
                    c.name: group_cpu_s(c.process.pid) - cpu_before[c.name]
                    for c in stack.sup.children
                }
                rss = sum(group_rss_mb(c.process.pid) for c in children)
                covered = read_since(r, ids, started)
                answered_429 = sum(
                    codes.get("429", 0)
                    for codes in sandbox.counters(agents=False)["statuses"].values()
                )
                limit: LimitRun | None = None
                if with_limit:
                    plan = last_plan(r) or {}
                    on_admin = (plan.get("admin_by_tier") or {}).get(tier, 0)
                    rows = [(a, i < on_admin) for i, a in enumerate(ids)]
                    own_before = time.process_time()
                    limit = sweep_limit(
                        stack.settings.gateway_url,
                        stack.settings.gateway.admin_key.get_secret_value(),
                        rows,
                        agent_keys,
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
                        "covered": covered,
                        "failed": status["failed"],
                        "rate_limited": status["rate_limited"] + status["paced"],
                        "answered_429": answered_429,
                    }
                )
                against = (
                    f"limit {limit_s:.2f} s ({limit.calls} calls, {limit.failed} failed) "
                    f"| ratio {sweep_s / limit_s:.2f} | "
                    if limit
                    else ""
                )
                click.echo(
                    f"sweep {n + 1}: {sweep_s:.2f} s ({agents / sweep_s:,.0f} wallets/s, "
                    f"{status['batches']} messages, {covered}/{agents} read within the period, "
                    f"{status['failed']} failed, {answered_429} × 429, "
                    f"{status['paced']} held back) | {against}"
                    f"worker RSS {rss:.0f} MB | CPU s: "
                    + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
                )
            sweep_med = statistics.median(x["sweep_s"] for x in runs)
            limit_med = statistics.median(x["limit_s"] for x in runs) if with_limit else None
            click.echo(
                f"median: sweep {sweep_med:.2f} s ({agents / sweep_med:,.0f} wallets/s, "
                f"{sweep_med / agents * 1e6:.0f} µs per agent), "
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
                        "tier": tier,
                        "keys": keys,
                        "period_s": period,
                        "sweep_s": round(sweep_med, 2),
                        "us_per_agent": round(sweep_med / agents * 1e6, 1),
                        "covered_min": min(x["covered"] for x in runs),
                        "within_period": all(
                            x["covered"] == agents and x["sweep_s"] <= period for x in runs
                        ),
                        "answered_429": sum(x["answered_429"] for x in runs),
                        "plan_defects": sum(x["rate_limited"] for x in runs),
                        "rss_mb": [round(x["rss_mb"]) for x in runs],
                        "in_flight": total_in_flight,
                        **(
                            limit_fields(sweep_med, limit_med)
                            if limit_med
                            else {"limit_s": None, "ratio": None}
                        ),
                    }
                )
            )
