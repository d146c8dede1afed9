"""`fleet bench …`: benchmarks that start a private stack and print their figures.

Each prints a JSON object as its last line, so a script can read the result.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import click

from cli.main import config_errors_exit, main


@main.group()
def bench() -> None:
    """Benchmarks against a private stack (Redis, sandbox, real workers) on free ports."""


def bench_manifest(agents: int, groups: int = 4, fleet: str = "bench") -> dict[str, Any]:
    per_group, rest = divmod(agents, groups)
    out = []
    for g in range(groups):
        count = per_group + (1 if g < rest else 0)
        if count:
            out.append({
                "id_prefix": f"seg{g}", "count": count, "tier": "standard", "initial_balance": "25.00",
                "capabilities": ["support"], "trust_claims": [{"type": "operator", "value": "bench"}],
                "sla_template": "standard-support" if g % 2 == 0 else "premium-support",
                "pricing": {"per_task": "0.02"},
            })
    return {"fleet": fleet, "environment": "test", "agents": out}


@bench.command("provision")
@click.option("--agents", type=int, default=1000, show_default=True)
@click.option("--latency-ms", type=float, default=50.0, show_default=True, help="Sandbox latency per call.")
@click.option("--workers", type=int, default=2, show_default=True, help="Provisioning worker processes.")
@click.option("--threads", type=int, default=48, show_default=True, help="Threads per worker (agents in flight each).")
@click.option("--keep", type=click.Path(file_okay=False), default=None, help="Keep the stack's files (logs, database) here.")
@config_errors_exit
def bench_provision(agents: int, latency_ms: float, workers: int, threads: int, keep: str | None) -> None:
    """Provision AGENTS agents from a manifest through the queue; time until every agent is done."""
    from cli.stack import local_stack

    base = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    with local_stack(base, latency_ms=latency_ms, jitter_ms=latency_ms / 5,
                     gateway={"max_connections": max(threads * 2, 100)}) as stack:
        for i in range(workers):
            stack.start_worker(["provisioning"], concurrency=threads, pool="threads", name=f"provisioning-{i}")
        stack.start_worker(["audit"], concurrency=2, name="audit")
        app = stack.celery()
        sessions = _sessions(stack.settings)
        manifest = bench_manifest(agents)
        job_id = uuid.uuid4().hex
        click.echo(f"provisioning {agents} agents at {latency_ms:.0f} ms gateway latency; {workers} workers × {threads} threads")
        started = time.perf_counter()
        app.send_task("provisioning.provision_fleet", kwargs={"manifest": manifest, "job_id": job_id, "submitted_by": "bench"})
        progress = _wait_job(sessions, job_id, timeout_s=600)
        wall = time.perf_counter() - started
        counters = stack.sandbox().counters()
        click.echo(f"done {progress.done}, failed {progress.failed}, pending {progress.pending} in {wall:.2f} s "
                   f"({agents / wall:.0f} agents/s); register_agent calls: {counters['tools'].get('register_agent', 0)}")
        cpu = {c.name: cpu_seconds(c.process.pid) for c in stack.sup.children}
        click.echo("CPU seconds: " + ", ".join(f"{name} {sec:.1f}" for name, sec in cpu.items()))
        click.echo(json.dumps({"agents": agents, "wall_s": round(wall, 2), "done": progress.done, "failed": progress.failed,
                               "latency_ms": latency_ms}))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children (Linux /proc), so a
    benchmark can say where the machine's time went even on a noisy host."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _sessions(settings: Any) -> Any:
    from fleet.storage.db import engine_for, session_factory

    return session_factory(engine_for(settings.sqlalchemy_url))


def _wait_job(sessions: Any, job_id: str, timeout_s: float) -> Any:
    from fleet.provisioning.pipeline import job_progress

    deadline = time.monotonic() + timeout_s
    while True:
        progress = job_progress(sessions, job_id, with_agents=False)
        if progress is not None and progress.state in ("done", "invalid", "refused"):
            return progress
        if time.monotonic() > deadline:
            raise click.ClickException(f"job {job_id} not done after {timeout_s:.0f} s: {progress and progress.as_dict(False)}")
        time.sleep(0.25)
