"""`fleet bench …`: the launcher of the benchmarks in `benchmarks/`, imported when one runs.

Each benchmark starts a private stack on free ports and prints a JSON object as
its last line, with the limit measured in the same run and the ratio to it.
"""

from __future__ import annotations

import click

from cli.common import config_errors_exit


@click.group()
def bench() -> None:
    """Benchmarks against a private stack (Redis, sandbox, real workers) on free ports."""


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
    from benchmarks import provision

    provision.run(agents, latency_ms, workers, threads, keep)


@bench.command("sla")
@click.option("--agents", type=int, default=10000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="sla worker processes.")
@click.option(
    "--threads", type=int, default=4, show_default=True, help="Batches in flight per worker."
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 5000),
    default=None,
    help="Agents per message (default FLEET_SLA__BATCH_SIZE).",
)
@click.option(
    "--breach-share",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="Share of the agents whose snapshot breaks their p99 latency term.",
)
@click.option(
    "--sweeps",
    type=click.IntRange(1),
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
    workers: int,
    threads: int,
    batch_size: int | None,
    breach_share: float,
    sweeps: int,
    keep: str | None,
) -> None:
    """Compliance sweeps of AGENTS agents through the sla queue, judged on fresh metrics
    snapshots; time until every agent is checked."""
    from benchmarks import sla

    sla.run(agents, workers, threads, batch_size, breach_share, sweeps, keep)


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
    """A tier-4 freeze sent behind a flood of tier-1 actions: one worker per tier queue keeps it
    prompt."""
    from benchmarks import escalation

    escalation.run(actions, drain, keep)


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
    help="Measure the limit after each sweep "
    "(--no-limit: sweeps only, e.g. to watch memory over many).",
)
@click.option(
    "--tier",
    type=click.Choice(["free", "starter", "pro", "enterprise"]),
    default="pro",
    show_default=True,
    help="The tier of every agent's key (its window at the sandbox).",
)
@click.option(
    "--keys",
    type=click.Choice(["own", "admin"]),
    default="own",
    show_default=True,
    help="Read every wallet with the agent's own key (its window) or with the admin key.",
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
    tier: str,
    keys: str,
    keep: str | None,
) -> None:
    """Wallet polls of AGENTS agents through the metrics queue on their plan, each against
    the limit.

    The plan's period is one sweep, so every sweep reads every wallet; on own keys each
    read counts against the agent's window, as the sandbox enforces it. Sweep time is from
    sending the tick to the sweep's record saying the last batch is stored. The limit is a
    bare asyncio client in this process making the same 2·N REST reads with the same keys
    over the gateway package's keep-alive pool at the same number of calls in flight.
    """
    from benchmarks import sweep

    sweep.run(
        agents,
        latency_ms,
        sweeps,
        workers,
        pool,
        concurrency,
        batch_size,
        in_flight,
        error_rate,
        timeout_rate,
        with_limit,
        keep,
        tier=tier,
        keys=keys,
    )


@bench.command("events")
@click.option("--agents", type=int, default=10000, show_default=True)
@click.option(
    "--rounds", type=int, default=3, show_default=True, help="Heartbeats per agent in the burst."
)
@click.option("--workers", type=int, default=1, show_default=True, help="Metrics workers.")
@click.option("--concurrency", type=int, default=2, show_default=True, help="Processes per worker.")
@click.option(
    "--batch-size", type=int, default=500, show_default=True, help="Events per queue message."
)
@click.option(
    "--real-load-s",
    type=float,
    default=20.0,
    show_default=True,
    help="How long to send at the real load (AGENTS/60 per second).",
)
@click.option("--profile", is_flag=True, help="Also profile the ingest of one batch (cProfile).")
@click.option(
    "--keep", type=click.Path(file_okay=False), default=None, help="Keep the stack's files here."
)
def bench_events(
    agents: int,
    rounds: int,
    workers: int,
    concurrency: int,
    batch_size: int,
    real_load_s: float,
    profile: bool,
    keep: str | None,
) -> None:
    """Signed heartbeats of AGENTS agents end to end (stream → queue → verified → snapshot),
    against a bare loop reading and verifying the same events, and the snapshot latency at
    the real load."""
    from benchmarks import events

    events.run(agents, rounds, workers, concurrency, batch_size, real_load_s, profile, keep)


@bench.command("audit")
@click.option("--entries", type=int, default=50000, show_default=True)
@click.option(
    "--batch", type=int, default=None, help="Events per queue message (default audit.batch_size)."
)
@click.option(
    "--concurrency",
    type=int,
    default=2,
    show_default=True,
    help="Audit worker processes (or threads).",
)
@click.option(
    "--pool", type=click.Choice(["prefork", "threads"]), default="prefork", show_default=True
)
@click.option(
    "--mirror", is_flag=True, help="Also mirror to the (zero-latency) sandbox while appending."
)
@click.option(
    "--keep", type=click.Path(file_okay=False), default=None, help="Keep the stack's files here."
)
@config_errors_exit
def bench_audit(
    entries: int, batch: int | None, concurrency: int, pool: str, mirror: bool, keep: str | None
) -> None:
    """Push ENTRIES audit events through the audit queue into SQLite; the last line is the rate."""
    from benchmarks import audit

    audit.run_audit(entries, batch, concurrency, pool, mirror, keep)


@bench.command("audit-verify")
@click.option("--entries", type=int, default=1_000_000, show_default=True)
@click.option(
    "--keep", type=click.Path(file_okay=False), default=None, help="Keep the database here."
)
@config_errors_exit
def bench_audit_verify(entries: int, keep: str | None) -> None:
    """Fill a SQLite log with ENTRIES entries, then time `fleet audit verify` on it."""
    from benchmarks import audit

    audit.run_verify(entries, keep)


@bench.command("route")
@click.option("--tasks", type=int, default=20000, show_default=True)
@click.option(
    "--latency-ms", type=float, default=50.0, show_default=True, help="Each A2A task's latency."
)
@click.option("--agents", type=int, default=20, show_default=True, help="Simulated agents.")
@click.option("--workers", type=int, default=1, show_default=True, help="routing worker processes.")
@click.option("--pool", type=int, default=4, show_default=True, help="Pool processes per worker.")
@click.option(
    "--batch", type=click.IntRange(1, 1000), default=100, show_default=True, help="Tasks a message."
)
@click.option(
    "--keep", type=click.Path(file_okay=False), default=None, help="Keep the stack's files here."
)
@config_errors_exit
def bench_route(
    tasks: int,
    latency_ms: float,
    agents: int,
    workers: int,
    pool: int,
    batch: int,
    keep: str | None,
) -> None:
    """Route TASKS tasks through the queue to the sandbox's A2A agents; the same-run limit is a
    bare JSON-RPC client at the same concurrency."""
    from benchmarks import route

    route.run(tasks, latency_ms, agents, workers, pool, batch, keep)


@bench.command("budget")
@click.option(
    "--concurrency", type=click.IntRange(1), default=1000, show_default=True,
    help="Admissions fired at once.",
)  # fmt: skip
@click.option("--budget", type=str, default="5.00", show_default=True, help="The fleet-day budget.")
@click.option(
    "--processes", type=click.IntRange(1), default=4, show_default=True,
    help="Worker processes the admissions come from.",
)  # fmt: skip
@click.option(
    "--threads", type=click.IntRange(1), default=32, show_default=True,
    help="Threads per process (admissions in flight each).",
)  # fmt: skip
@click.option(
    "--agents", type=click.IntRange(1), default=50, show_default=True,
    help="Agents the admissions are spread over.",
)  # fmt: skip
@click.option(
    "--keep", type=click.Path(file_okay=False), default=None, help="Keep the bench's files here."
)
@config_errors_exit
def bench_budget(
    concurrency: int, budget: str, processes: int, threads: int, agents: int, keep: str | None
) -> None:
    """CONCURRENCY admissions at once from several processes against one small budget: the
    overshoot must be 0.00; then with the bench's Redis stopped every admission refused."""
    from decimal import Decimal, InvalidOperation

    from benchmarks import budget as bench_module

    try:
        amount = Decimal(budget)
    except InvalidOperation:
        raise click.BadParameter(
            f"not a decimal amount: {budget!r}", param_hint="--budget"
        ) from None
    if not amount.is_finite() or amount <= 0:
        raise click.BadParameter(f"must be a positive amount, got {budget}", param_hint="--budget")
    bench_module.run(concurrency, amount, processes, threads, agents, keep)


@bench.command("console")
@click.option("--agents", type=click.IntRange(1), default=10000, show_default=True)
@click.option(
    "--requests", type=click.IntRange(1), default=20, show_default=True, help="Fetches a page."
)
@click.option(
    "--updates", type=click.IntRange(1), default=5, show_default=True, help="Live updates timed."
)
@click.option(
    "--critical-every",
    type=click.IntRange(0),
    default=50,
    show_default=True,
    help="One agent in this many is critical (0: none).",
)
@click.option(
    "--keep", type=click.Path(file_okay=False), default=None, help="Keep the stack's files here."
)
@config_errors_exit
def bench_console(
    agents: int, requests: int, updates: int, critical_every: int, keep: str | None
) -> None:
    """The console's overview and agent list at AGENTS agents (server time, page size), and
    a live update's delay after the sweep that caused it."""
    from benchmarks import console

    console.run(agents, requests, updates, critical_every, keep)
