"""`fleet bench provision`: a manifest provisioned through the provisioning queue, then again.

The manifest's groups are free and starter tiers: every agent registers with the
free key POST /v1/register hands out, so no key is imported, and the pro steps
(metrics, claims, listing) are skipped and recorded as such. The limit is each
agent's REST calls in the pipeline's order (register, identity, balance, the
move to the manifest's balance, budget cap, then the first health read) from a
bare asyncio client over the gateway package's keep-alive pool, with as many
agents in flight as the workers have threads.
"""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal
from typing import Any

import click

from benchmarks.common import (
    Phases,
    bare_client_limit,
    bench_manifest,
    cpu_seconds,
    limit_fields,
    limit_line,
    sessions_for,
    workdir,
)

# What POST /v1/register puts in a new agent's wallet.
FREE_CREDITS = Decimal("500")


def run(agents: int, latency_ms: float, workers: int, threads: int, keep: str | None) -> None:
    from stack.local import local_stack

    with (
        workdir(keep, "fleet-bench-") as base,
        local_stack(
            base,
            latency_ms=latency_ms,
            jitter_ms=latency_ms / 5,
            gateway={"max_connections": max(threads * 2, 100)},
        ) as stack,
    ):
        for i in range(workers):
            stack.start_worker(
                ["provisioning"], concurrency=threads, pool="threads", name=f"provisioning-{i}"
            )
        stack.start_worker(["audit"], concurrency=2, name="audit")
        app = stack.celery()
        sessions = sessions_for(stack.settings)
        manifest = bench_manifest(agents)
        job_id = uuid.uuid4().hex
        click.echo(
            f"provisioning {agents} agents at {latency_ms:.0f} ms gateway latency; {workers} "
            f"workers × {threads} threads"
        )
        started = time.perf_counter()
        app.send_task(
            "provisioning.provision_fleet",
            kwargs={"manifest": manifest, "job_id": job_id, "submitted_by": "bench"},
        )
        progress = _wait_job(sessions, job_id, timeout_s=600)
        wall = time.perf_counter() - started
        counters = stack.sandbox().counters()
        click.echo(
            f"done {progress.done}, failed {progress.failed}, pending {progress.pending} in "
            f"{wall:.2f} s "
            f"({agents / wall:.0f} agents/s); POST /v1/register calls: "
            f"{counters['tools'].get('register', 0)}"
        )
        cpu = {c.name: cpu_seconds(c.process.pid) for c in stack.sup.children}
        click.echo("CPU seconds: " + ", ".join(f"{name} {sec:.1f}" for name, sec in cpu.items()))
        # The same manifest again: it must find every agent it made and register none.
        registered = counters["tools"].get("register", 0)
        rerun_id = uuid.uuid4().hex
        rerun_started = time.perf_counter()
        app.send_task(
            "provisioning.provision_fleet",
            kwargs={"manifest": manifest, "job_id": rerun_id, "submitted_by": "bench"},
        )
        rerun = _wait_job(sessions, rerun_id, timeout_s=600)
        rerun_wall = time.perf_counter() - rerun_started
        rerun_registers = stack.sandbox().counters()["tools"].get("register", 0) - registered
        click.echo(
            f"re-run of the same manifest: done {rerun.done}, failed {rerun.failed} in "
            f"{rerun_wall:.2f} s; "
            f"POST /v1/register calls: {rerun_registers}"
        )
        limit = bare_client_limit(
            stack.settings.gateway_url,
            stack.settings.gateway.admin_key.get_secret_value(),
            _pipeline_calls(manifest, stack.settings.policy),
            workers * threads,
        )
        click.echo(limit_line(limit, wall, f"bare client, {workers * threads} agents in flight"))
        click.echo(
            json.dumps(
                {
                    "agents": agents,
                    "wall_s": round(wall, 2),
                    "done": progress.done,
                    "failed": progress.failed,
                    "latency_ms": latency_ms,
                    "rerun_register_calls": rerun_registers,
                    **limit_fields(wall, limit.seconds),
                }
            )
        )


def _pipeline_calls(manifest: dict[str, Any], policy: Any) -> list[Phases]:
    """Per agent of the manifest, under a fresh id, the REST calls a first provisioning run of
    a free or starter group makes, in its order: register, identity, balance, the move to the
    manifest's balance, budget cap, then the first health read (identity, balance, budget).
    The pro steps (metrics, claims, listing) are skipped for these tiers."""
    from fleet.gateway import operations as ops

    cap = policy.provisioning.budget_cap
    units: list[Phases] = []
    for group in manifest["agents"]:
        if group["tier"] not in ("free", "starter"):
            raise click.ClickException("the bench manifest must hold free or starter groups only")
        target = Decimal(group["initial_balance"])
        for _ in range(group["count"]):
            agent_id = f"lim-{uuid.uuid4().hex[:16]}"
            # A new wallet holds the free registration's credits; the step moves the difference.
            move = (
                ops.deposit(agent_id, target - FREE_CREDITS, "initial balance")
                if target > FREE_CREDITS
                else ops.withdraw(agent_id, FREE_CREDITS - target, "initial balance")
            )
            units.append(
                [
                    [ops.register(agent_id)],
                    [ops.get_identity(agent_id)],
                    [ops.get_balance(agent_id)],
                    [move],
                    [
                        ops.set_budget(
                            agent_id, cap.daily, cap.monthly, Decimal(str(cap.alert_threshold))
                        )
                    ],
                    [ops.get_identity(agent_id)],
                    [ops.get_balance(agent_id)],
                    [ops.get_budget(agent_id)],
                ]
            )
    return units


def _wait_job(sessions: Any, job_id: str, timeout_s: float) -> Any:
    from fleet.provisioning.pipeline import job_progress

    deadline = time.monotonic() + timeout_s
    while True:
        progress = job_progress(sessions, job_id, with_agents=False)
        if progress is not None and progress.state in ("done", "invalid", "refused"):
            return progress
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"job {job_id} not done after {timeout_s:.0f} s: "
                f"{progress and progress.as_dict(False)}"
            )
        time.sleep(0.25)
