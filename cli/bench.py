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
            out.append(
                {
                    "id_prefix": f"seg{g}",
                    "count": count,
                    "tier": "starter",
                    "initial_balance": "25.00",
                    "capabilities": ["support"],
                    "trust_claims": [{"type": "operator", "value": "bench"}],
                    "sla_template": "standard-support" if g % 2 == 0 else "premium-support",
                    "pricing": {"per_task": "0.02"},
                }
            )
    return {"fleet": fleet, "environment": "test", "agents": out}


@bench.command("provision")
@click.option("--agents", type=int, default=1000, show_default=True)
@click.option(
    "--latency-ms", type=float, default=50.0, show_default=True, help="Sandbox latency per call."
)
@click.option(
    "--workers", type=int, default=2, show_default=True, help="Provisioning worker processes."
)
@click.option(
    "--threads",
    type=int,
    default=24,
    show_default=True,
    help="Threads per worker (agents in flight each); measured, 24 beats 48 (less GIL contention).",
)
@click.option(
    "--keep",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep the stack's files (logs, database) here.",
)
@config_errors_exit
def bench_provision(
    agents: int, latency_ms: float, workers: int, threads: int, keep: str | None
) -> None:
    """Provision AGENTS agents from a manifest through the queue; time until every agent is done."""
    from cli.stack import local_stack

    base = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    with local_stack(
        base,
        latency_ms=latency_ms,
        jitter_ms=latency_ms / 5,
        gateway={"max_connections": max(threads * 2, 100)},
    ) as stack:
        for i in range(workers):
            stack.start_worker(
                ["provisioning"], concurrency=threads, pool="threads", name=f"provisioning-{i}"
            )
        stack.start_worker(["audit"], concurrency=2, name="audit")
        app = stack.celery()
        sessions = _sessions(stack.settings)
        manifest = bench_manifest(agents)
        job_id = uuid.uuid4().hex
        click.echo(
            f"provisioning {agents} agents at {latency_ms:.0f} ms gateway latency; {workers} workers × {threads} threads"
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
            f"done {progress.done}, failed {progress.failed}, pending {progress.pending} in {wall:.2f} s "
            f"({agents / wall:.0f} agents/s); register_agent calls: {counters['tools'].get('register_agent', 0)}"
        )
        cpu = {c.name: cpu_seconds(c.process.pid) for c in stack.sup.children}
        click.echo("CPU seconds: " + ", ".join(f"{name} {sec:.1f}" for name, sec in cpu.items()))
        # The same manifest again: it must find every agent it made and register none.
        registered = counters["tools"].get("register_agent", 0)
        rerun_id = uuid.uuid4().hex
        rerun_started = time.perf_counter()
        app.send_task(
            "provisioning.provision_fleet",
            kwargs={"manifest": manifest, "job_id": rerun_id, "submitted_by": "bench"},
        )
        rerun = _wait_job(sessions, rerun_id, timeout_s=600)
        rerun_wall = time.perf_counter() - rerun_started
        rerun_registers = stack.sandbox().counters()["tools"].get("register_agent", 0) - registered
        click.echo(
            f"re-run of the same manifest: done {rerun.done}, failed {rerun.failed} in {rerun_wall:.2f} s; "
            f"register_agent calls: {rerun_registers}"
        )
        click.echo(
            json.dumps(
                {
                    "agents": agents,
                    "wall_s": round(wall, 2),
                    "done": progress.done,
                    "failed": progress.failed,
                    "latency_ms": latency_ms,
                    "rerun_register_agent_calls": rerun_registers,
                }
            )
        )


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
            raise click.ClickException(
                f"job {job_id} not done after {timeout_s:.0f} s: {progress and progress.as_dict(False)}"
            )
        time.sleep(0.25)


# --------------------------------------------------------------------------- SLA and escalation


def insert_bench_agents(
    sessions: Any,
    agent_ids: list[str],
    *,
    fleet: str,
    policy: Any,
    template: str = "standard-support",
    status: str = "active",
) -> None:
    """Agent rows and their contracts, in bulk (what provisioning would have left behind)."""
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
                insert(Agent.__table__),
                [
                    {
                        "agent_id": a,
                        "fleet": fleet,
                        "environment": "bench",
                        "id_prefix": a.split("-")[0],
                        "tier": "standard",
                        "capabilities": ["support"],
                        "sla_template": template,
                        "status": status,
                        "steps_done": [],
                        "traffic_weight": "1",
                        "extra": {},
                        "created_at": now,
                        "updated_at": now,
                    }
                    for a in chunk
                ],
            )
            conn.execute(
                insert(SlaContract.__table__),
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


def _celery_sender(app: Any) -> Any:
    def send(messages: Any) -> None:
        with app.producer_or_acquire() as producer:
            for name, kwargs in messages:
                app.send_task(name, kwargs=kwargs, producer=producer, ignore_result=True)

    return send


@bench.command("sla")
@click.option("--agents", type=int, default=10000, show_default=True)
@click.option(
    "--latency-ms", type=float, default=50.0, show_default=True, help="Sandbox latency per call."
)
@click.option("--workers", type=int, default=1, show_default=True, help="sla worker processes.")
@click.option(
    "--threads", type=int, default=4, show_default=True, help="Batches in flight per worker."
)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Agents per message (default FLEET_SLA__BATCH_SIZE).",
)
@click.option(
    "--in-flight",
    type=int,
    default=None,
    help="Checks in flight per batch (default FLEET_SLA__CHECKS_IN_FLIGHT).",
)
@click.option(
    "--sweeps",
    type=int,
    default=2,
    show_default=True,
    help="Sweeps in a row (the first opens the episodes).",
)
@click.option(
    "--keep", type=click.Path(file_okay=False), default=None, help="Keep the stack's files here."
)
@config_errors_exit
def bench_sla(
    agents: int,
    latency_ms: float,
    workers: int,
    threads: int,
    batch_size: int | None,
    in_flight: int | None,
    sweeps: int,
    keep: str | None,
) -> None:
    """A compliance sweep of AGENTS agents through the sla queue against the sandbox; time until every agent is checked."""
    import shutil

    from cli.stack import local_stack
    from config.settings import SlaSettings
    from fleet.hotstate import connect
    from fleet.sla.service import sweep_progress

    base = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="fleet-bench-sla-"))
    defaults = SlaSettings()
    sla = {
        "batch_size": batch_size or defaults.batch_size,
        "checks_in_flight": in_flight or defaults.checks_in_flight,
    }
    try:
        with local_stack(
            base,
            latency_ms=latency_ms,
            jitter_ms=latency_ms / 5,
            sla=sla,
            gateway={"max_connections": max(threads * sla["checks_in_flight"], 100)},
        ) as stack:
            seeded = stack.sandbox().seed(agents, prefix="bench")
            ids = seeded["agent_ids"]
            sessions = _sessions(stack.settings)
            insert_bench_agents(sessions, ids, fleet="bench", policy=stack.settings.policy)
            for i in range(workers):
                stack.start_worker(["sla"], concurrency=threads, pool="threads", name=f"sla-{i}")
            app, r = stack.celery(), connect(stack.settings.redis_url)
            click.echo(
                f"sweeping {agents} agents at {latency_ms:.0f} ms gateway latency; {workers} sla worker(s) × "
                f"{threads} threads, {sla['batch_size']} agents per message, {sla['checks_in_flight']} checks in flight each"
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
                    f"sweep {n + 1}: {agents} agents in {wall:.2f} s ({agents / wall:.0f} agents/s) in "
                    f"{progress['batches']} messages; {progress['breaches']} in breach, {progress['failed']} failed"
                )
            interval = stack.settings.schedule.sla_check_s
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
                    }
                )
            )
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def run_flood(
    stack: Any, actions: int, *, drain: bool = False, echo: Any = click.echo
) -> dict[str, Any]:
    """Put ACTIONS tier-1 actions on escalation.tier1, then send one tier-4 freeze; time the freeze
    and see how much tier-1 work is still waiting when it is done. Workers for escalation.tier1 and
    escalation.tier4 must be running on the stack."""
    import uuid as _uuid
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import func, insert, select

    from fleet.clock import ManualClock
    from fleet.escalation.engine import EngineDeps, evaluate
    from fleet.hotstate import connect
    from fleet.sla.models import ActionStatus, SlaEpisode, SlaEscalation
    from fleet.storage.db import write_connection
    from fleet.storage.records import Agent, AgentStatus

    settings, sessions, r = (
        stack.settings,
        _sessions(stack.settings),
        connect(stack.settings.redis_url),
    )
    now = datetime.now(UTC)
    clock = ManualClock(now)
    flood_agents = [f"flood{i:05d}-{_uuid.uuid4().hex[:8]}" for i in range(actions)]
    insert_bench_agents(sessions, flood_agents, fleet="flood", policy=settings.policy)
    [target] = stack.sandbox().seed(1, prefix="frz", profile="dead")["agent_ids"]
    insert_bench_agents(sessions, [target], fleet="flood", policy=settings.policy)

    def episode(agent: str, opened: datetime) -> dict[str, Any]:
        return {
            "episode_id": _uuid.uuid4().hex,
            "agent_id": agent,
            "fleet": "flood",
            "sla_id": f"sla-{agent}",
            "state": "open",
            "open_agent": agent,
            "breached_terms": ["uptime_pct"],
            "opened_at": opened,
            "opened_by": "bench",
            "last_breach_at": opened,
            "compliant_streak": 0,
        }

    flood_eps = [episode(a, now) for a in flood_agents]
    target_ep = episode(target, now - timedelta(minutes=31))
    with write_connection(sessions) as conn:
        for start in range(0, len(flood_eps), 1000):
            conn.execute(insert(SlaEpisode.__table__), flood_eps[start : start + 1000])
        conn.execute(insert(SlaEpisode.__table__), [target_ep])
        # The target has been escalating for 31 minutes: tiers 1-3 are behind it.
        conn.execute(
            insert(SlaEscalation.__table__),
            [
                {
                    "episode_id": target_ep["episode_id"],
                    "tier": t,
                    "action": a,
                    "task": f"escalation.tier{t}.{a}",
                    "status": "done",
                    "dispatched_at": now - timedelta(minutes=31 - m),
                    "episode_age_s": m * 60,
                    "dispatch_count": 1,
                    "attempts": 1,
                    "steps": {},
                    "result": {},
                }
                for t, a, m in ((1, "remediate", 0), (2, "reroute", 5), (3, "notify", 15))
            ],
        )
    engine = EngineDeps(
        sessions, settings.policy.escalation, clock, _celery_sender(stack.celery()), redis=r
    )

    def tier1(done: bool) -> int:
        wanted = (
            [s.value for s in ActionStatus if s.finished]
            if done
            else [ActionStatus.DISPATCHED.value, ActionStatus.RUNNING.value]
        )
        with sessions() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(SlaEscalation)
                    .where(
                        SlaEscalation.tier == 1,
                        SlaEscalation.status.in_(wanted),
                        SlaEscalation.episode_id != target_ep["episode_id"],
                    )
                )
                or 0
            )

    started = time.perf_counter()
    sent = evaluate(engine, [e["episode_id"] for e in flood_eps])
    send_s = time.perf_counter() - started
    echo(f"{len(sent)} tier-1 actions sent to escalation.tier1 in {send_s:.2f} s")
    deadline = time.monotonic() + 120
    while tier1(done=True) < min(50, actions):  # the tier-1 workers are busy draining
        if time.monotonic() > deadline:
            raise RuntimeError("the tier-1 worker is not draining")
        time.sleep(0.05)

    freeze_started = time.perf_counter()
    [dispatch] = evaluate(engine, [target_ep["episode_id"]])
    assert dispatch.tier == 4
    deadline = time.monotonic() + 60
    while True:
        with sessions() as s:
            row = s.get(SlaEscalation, (target_ep["episode_id"], 4))
            status = row.status if row else None
        if status in ("done", "failed"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"tier 4 not done after 60 s (status {status})")
        time.sleep(0.02)
    freeze_s = time.perf_counter() - freeze_started
    queued, pending, finished = r.llen("escalation.tier1"), tier1(done=False), tier1(done=True)
    with sessions() as s:
        agent = s.get(Agent, target)
        paused = agent is not None and agent.status == AgentStatus.PAUSED
    frozen = bool(stack.sandbox().agent(target)["wallet"]["frozen"])
    echo(
        f"tier-4 freeze done in {freeze_s:.3f} s (status {status}, agent paused {paused}, wallet frozen {frozen}); "
        f"tier-1 still waiting: {pending} of {actions} ({queued} in the queue, {finished} done)"
    )
    out = {
        "actions": actions,
        "send_s": round(send_s, 2),
        "freeze_s": round(freeze_s, 3),
        "freeze_status": status,
        "paused": paused,
        "wallet_frozen": frozen,
        "tier1_pending_at_freeze": pending,
        "tier1_queued_at_freeze": queued,
        "tier1_done_at_freeze": finished,
    }
    if drain:
        deadline = time.monotonic() + 1800
        while tier1(done=False):
            if time.monotonic() > deadline:
                raise RuntimeError("tier-1 backlog not drained after 30 min")
            time.sleep(0.5)
        out["tier1_drained_s"] = round(time.perf_counter() - started, 1)
        echo(f"tier-1 backlog drained {out['tier1_drained_s']} s after the flood was sent")
    return out


@bench.command("escalation-flood")
@click.option(
    "--actions",
    type=int,
    default=5000,
    show_default=True,
    help="Tier-1 actions flooding escalation.tier1.",
)
@click.option(
    "--drain",
    is_flag=True,
    help="Also wait for the tier-1 backlog to drain and report how long it took.",
)
@click.option(
    "--keep", type=click.Path(file_okay=False), default=None, help="Keep the stack's files here."
)
@config_errors_exit
def bench_escalation_flood(actions: int, drain: bool, keep: str | None) -> None:
    """A tier-4 freeze sent behind a flood of tier-1 actions: one worker per tier queue keeps it prompt."""
    import shutil

    from cli.stack import local_stack

    base = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="fleet-bench-flood-"))
    try:
        with local_stack(base) as stack:
            stack.start_worker(["escalation.tier1"], concurrency=4, pool="threads", name="tier1")
            stack.start_worker(["escalation.tier4"], concurrency=2, pool="threads", name="tier4")
            click.echo(json.dumps(run_flood(stack, actions, drain=drain)))
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- monitoring sweep


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

    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_wire() if client == "wire" else run_aiohttp())


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


@bench.command("sweep")
@click.option("--agents", type=int, default=10000, show_default=True)
@click.option(
    "--latency-ms",
    type=float,
    default=50.0,
    show_default=True,
    help="Sandbox latency per call (jitter ±20 %).",
)
@click.option(
    "--sweeps",
    type=int,
    default=3,
    show_default=True,
    help="Sweeps in a row; each is followed by a limit run.",
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="metrics worker processes (celery worker).",
)
@click.option(
    "--pool", type=click.Choice(["prefork", "threads"]), default="prefork", show_default=True
)
@click.option(
    "--concurrency",
    type=int,
    default=4,
    show_default=True,
    help="Pool size per worker: processes (prefork) or batches at once (threads); "
    "4 is FLEET_WORKER__CONCURRENCY's default.",
)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Agents per message (default FLEET_METRICS__BATCH_SIZE).",
)
@click.option(
    "--in-flight",
    type=int,
    default=None,
    help="Calls in flight per process (default FLEET_METRICS__IN_FLIGHT).",
)
@click.option(
    "--error-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Share of gateway calls answering 500.",
)
@click.option(
    "--timeout-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Share of gateway calls never answered.",
)
@click.option(
    "--limit/--no-limit",
    "with_limit",
    default=True,
    show_default=True,
    help="Measure the limit after each sweep (--no-limit: sweeps only, e.g. to watch memory over many).",
)
@click.option(
    "--keep", type=click.Path(file_okay=False), default=None, help="Keep the stack's files here."
)
@config_errors_exit
def bench_sweep(
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
    """Monitoring sweeps of AGENTS agents through the metrics queue, each against the limit.

    Sweep time is from sending the tick to the sweep's record saying the last
    snapshot and the fleet aggregate are stored. The limit is a bare asyncio
    poller making the same 4·N calls at the same concurrency, in this process,
    with each client (the sweep's keep-alive pool, a bare aiohttp session): the
    faster of the two.
    """
    import shutil
    import statistics

    from cli.stack import local_stack
    from config.settings import MetricsSettings
    from fleet.hotstate import connect

    base = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="fleet-bench-sweep-"))
    defaults = MetricsSettings()
    metrics = {
        "batch_size": batch_size or defaults.batch_size,
        "in_flight": in_flight or defaults.in_flight,
    }
    processes = workers * (concurrency if pool == "prefork" else 1)
    total_in_flight = processes * metrics["in_flight"]
    # The sweep's deadline (0.9 × interval) must not cut a large fleet's sweep short.
    interval = max(60.0, agents / 1000 * 1.5)
    try:
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
                _sessions(stack.settings), ids, fleet="bench", policy=stack.settings.policy
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
                f"sweeping {agents} agents at {latency_ms:.0f} ms gateway latency: {workers} metrics worker(s), "
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
                    f"sweep {n + 1}: {sweep_s:.2f} s ({agents / sweep_s:,.0f} agents/s, {status['batches']} messages, "
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
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
