"""`fleet bench sla`: compliance sweeps through the sla queue against the sandbox.

Each sweep is timed from sending `sla.sweep` until its progress record says it
finished. The limit is one check_sla_compliance call per agent from a bare
aiohttp session with as many checks in flight as the sla workers allow in all
(workers × threads × checks in flight); the ratio is to the median sweep.
"""

from __future__ import annotations

import json
import statistics
import time

import click

from benchmarks.common import (
    bare_client_limit,
    insert_bench_agents,
    limit_fields,
    limit_line,
    sessions_for,
    workdir,
)


def run(
    agents: int,
    latency_ms: float,
    workers: int,
    threads: int,
    batch_size: int | None,
    in_flight: int | None,
    sweeps: int,
    keep: str | None,
) -> None:
    from config.settings import SlaSettings
    from fleet.gateway import tools
    from fleet.hotstate import connect
    from fleet.sla.service import sweep_progress
    from stack.local import local_stack

    defaults = SlaSettings()
    sla = {
        "batch_size": batch_size or defaults.batch_size,
        "checks_in_flight": in_flight or defaults.checks_in_flight,
    }
    with workdir(keep, "fleet-bench-sla-") as base:
        with local_stack(
            base,
            latency_ms=latency_ms,
            jitter_ms=latency_ms / 5,
            sla=sla,
            gateway={"max_connections": max(threads * sla["checks_in_flight"], 100)},
        ) as stack:
            seeded = stack.sandbox().seed(agents, prefix="bench")
            ids = seeded["agent_ids"]
            sessions = sessions_for(stack.settings)
            insert_bench_agents(sessions, ids, fleet="bench", policy=stack.settings.policy)
            for i in range(workers):
                stack.start_worker(["sla"], concurrency=threads, pool="threads", name=f"sla-{i}")
            app, r = stack.celery(), connect(stack.settings.redis_url)
            click.echo(
                f"sweeping {agents} agents at {latency_ms:.0f} ms gateway latency; {workers} sla "
                "worker(s) × "
                f"{threads} threads, {sla['batch_size']} agents per message, "
                f"{sla['checks_in_flight']} checks in flight each"
            )
            runs = []
            for n in range(sweeps):
                before = r.get("fleet:sla:sweep:last")
                started = time.perf_counter()
                app.send_task("sla.sweep", kwargs={"force": True})
                deadline = time.monotonic() + 600
                while True:
                    progress = sweep_progress(r)
                    if progress and progress["sweep_id"] != before and "finished_at" in progress:
                        break
                    if time.monotonic() > deadline:
                        raise click.ClickException(f"sweep not finished after 600 s: {progress}")
                    time.sleep(0.1)
                wall = time.perf_counter() - started
                runs.append(
                    {
                        "sweep": n + 1,
                        "wall_s": round(wall, 2),
                        "sweep_s": progress["duration_s"],
                        "batches": progress["batches"],
                        "breaches": progress["breaches"],
                        "failed": progress["failed"],
                    }
                )
                click.echo(
                    f"sweep {n + 1}: {agents} agents in {wall:.2f} s ({agents / wall:.0f} "
                    "agents/s) in "
                    f"{progress['batches']} messages; {progress['breaches']} in breach, "
                    f"{progress['failed']} failed"
                )
            interval = stack.settings.schedule.sla_check_s
            in_flight_all = workers * threads * sla["checks_in_flight"]
            limit = bare_client_limit(
                stack.settings.gateway_url,
                stack.settings.gateway.admin_key.get_secret_value(),
                [[[tools.check_sla_compliance(a)]] for a in ids],
                in_flight_all,
            )
            median = statistics.median(x["wall_s"] for x in runs)
            click.echo(
                limit_line(limit, median, f"bare client, {in_flight_all} checks in flight")
                + " (median sweep)"
            )
            click.echo(
                json.dumps(
                    {
                        "agents": agents,
                        "latency_ms": latency_ms,
                        "workers": workers,
                        "threads": threads,
                        **sla,
                        "runs": runs,
                        "interval_s": interval,
                        "worst_share_of_interval": round(
                            max(x["wall_s"] for x in runs) / interval, 4
                        ),
                        "wall_s": median,
                        **limit_fields(median, limit.seconds),
                    }
                )
            )
