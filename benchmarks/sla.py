"""`fleet bench sla`: compliance sweeps through the sla queue, judged from the metrics snapshots.

The compliance sweep makes no gateway call: it reads each agent's latest
metrics snapshot from Redis, judges the agent's SLA terms on it (see
:mod:`fleet.sla.compliance`), moves episodes and stores each agent's sample.
So the benchmark writes a fresh snapshot for every agent first (what a metrics
sweep leaves behind; ``--breach-share`` of them over their p99 latency term),
then times each sweep from sending `sla.sweep` until its progress record says
it finished. The first sweep opens the breaching agents' episodes.

The limit is the same work without the system around it: the same batches,
each read from Redis in one pipeline, judged with the same ``decide()`` and its
samples written back in one pipeline, by a plain loop in as many threads as the
sla workers run batches at once (workers × threads); the ratio is the median
sweep over the median limit.
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import click

from benchmarks.common import insert_bench_agents, limit_fields, sessions_for, workdir

TEMPLATE = "standard-support"


def write_fresh_snapshots(r: Any, agent_ids: list[str], breach_share: float) -> int:
    """A healthy snapshot per agent, taken now; every 1/breach_share-th one over its p99 term.
    Returns how many breach."""
    from fleet.monitoring.snapshot import Health, Snapshot, write_snapshots

    now = time.time()
    every = round(1 / breach_share) if breach_share > 0 else 0
    snapshots = [
        Snapshot(
            agent_id=a,
            polled_at=now,
            health=Health.HEALTHY,
            latency_p50=120.0,
            latency_p99=5000.0 if every and i % every == 0 else 300.0,
            error_rate=0.001,
            fleet="bench",
        )
        for i, a in enumerate(agent_ids)
    ]
    for start in range(0, len(snapshots), 5000):
        write_snapshots(r, snapshots[start : start + 5000])
    return sum(1 for s in snapshots if s.latency_p99 == 5000.0)


def sla_limit(
    redis_url: str,
    policy: Any,
    agent_ids: list[str],
    batch_size: int,
    threads: int,
    max_age_s: float,
) -> float:
    """Seconds for the bare equivalent of one sweep: per batch, one Redis pipeline reading the
    snapshots, ``decide()`` per agent on the template's terms, one pipeline writing the samples
    (with their TTL); ``threads`` batches at once."""
    from fleet.hotstate import connect
    from fleet.monitoring.snapshot import Snapshot, snapshot_key
    from fleet.sla.compliance import decide
    from fleet.sla.contracts import template_terms
    from fleet.sla.service import SAMPLE_TTL_S, sample_key

    terms = template_terms(policy, TEMPLATE)
    ordered = sorted(agent_ids)
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    r = connect(redis_url)

    def check(batch: list[str]) -> None:
        now = datetime.now(UTC)
        pipe = r.pipeline(transaction=False)
        for a in batch:
            pipe.hgetall(snapshot_key(a))
        write = r.pipeline(transaction=False)
        for a, raw in zip(batch, pipe.execute(), strict=True):
            sample = decide(a, now, Snapshot.from_redis(raw) if raw else None, terms, max_age_s)
            fields: dict[Any, Any] = sample.to_redis()  # redis's stubs want a wider key type
            write.hset(sample_key(a), mapping=fields)
            write.expire(sample_key(a), SAMPLE_TTL_S)
        write.execute()

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(check, batches))
    seconds = time.perf_counter() - started
    r.close()
    return seconds


def run(
    agents: int,
    workers: int,
    threads: int,
    batch_size: int | None,
    breach_share: float,
    sweeps: int,
    keep: str | None,
) -> None:
    from config.settings import SlaSettings
    from fleet.hotstate import connect
    from fleet.sla.service import sweep_progress
    from stack.local import local_stack

    sla = {"batch_size": batch_size or SlaSettings().batch_size}
    with workdir(keep, "fleet-bench-sla-") as base:
        with local_stack(base, sla=sla) as stack:
            ids = [f"bench-{i:06d}" for i in range(agents)]
            sessions = sessions_for(stack.settings)
            insert_bench_agents(
                sessions, ids, fleet="bench", policy=stack.settings.policy, template=TEMPLATE
            )
            for i in range(workers):
                stack.start_worker(["sla"], concurrency=threads, pool="threads", name=f"sla-{i}")
            app, r = stack.celery(), connect(stack.settings.redis_url)
            click.echo(
                f"checking {agents} agents on their snapshots; {workers} sla worker(s) × "
                f"{threads} threads, {sla['batch_size']} agents per message"
            )
            runs = []
            for n in range(sweeps):
                # Fresh snapshots before each sweep, as the metrics sweep would leave them.
                breaching = write_fresh_snapshots(r, ids, breach_share)
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
                    time.sleep(0.02)
                wall = time.perf_counter() - started
                runs.append(
                    {
                        "sweep": n + 1,
                        "wall_s": round(wall, 3),
                        "sweep_s": progress["duration_s"],
                        "batches": progress["batches"],
                        "breaches": progress["breaches"],
                        "failed": progress["failed"],
                    }
                )
                click.echo(
                    f"sweep {n + 1}: {agents} agents in {wall:.2f} s ({agents / wall:.0f} "
                    f"agents/s) in {progress['batches']} messages; {progress['breaches']} in "
                    f"breach (of {breaching} written so), {progress['failed']} failed"
                )
            limits = []
            for _ in range(sweeps):
                write_fresh_snapshots(r, ids, breach_share)
                limits.append(
                    sla_limit(
                        stack.settings.redis_url,
                        stack.settings.policy,
                        ids,
                        sla["batch_size"],
                        workers * threads,
                        stack.settings.sla.snapshot_max_age_s,
                    )
                )
            median = statistics.median(x["wall_s"] for x in runs)
            limit_s = statistics.median(limits)
            click.echo(
                f"limit (plain loop: Redis pipelines and decide(), {workers * threads} batches "
                f"at once): " + ", ".join(f"{x:.2f}" for x in limits) + f" s | ratio "
                f"{median / limit_s:.2f} (median sweep over median limit)"
            )
            interval = stack.settings.schedule.sla_check_s
            click.echo(
                json.dumps(
                    {
                        "agents": agents,
                        "workers": workers,
                        "threads": threads,
                        **sla,
                        "runs": runs,
                        "interval_s": interval,
                        "worst_share_of_interval": round(
                            max(x["wall_s"] for x in runs) / interval, 4
                        ),
                        "wall_s": median,
                        **limit_fields(median, limit_s),
                    }
                )
            )
