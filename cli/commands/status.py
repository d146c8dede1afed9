"""`fleet status`: queue depths, worker heartbeats, the fleet's health and open alerts."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from cli.common import config_errors_exit, settings_for_cli
from config.settings import Settings
from workers.queues import ALL_QUEUES


@click.command()
@config_errors_exit
def status() -> None:
    """Show each queue's depth and when a worker last answered its heartbeat."""
    import redis

    from fleet.heartbeat import read_heartbeat
    from fleet.hotstate import connect

    settings = settings_for_cli()
    r = connect(settings.redis_url)
    try:
        r.ping()
    except redis.RedisError as exc:
        click.echo(f"fleet: cannot reach Redis at {settings.redis_url}: {exc}", err=True)
        sys.exit(1)
    now = time.time()
    stale_after = settings.schedule.heartbeat_s * 3
    click.echo(f"{'queue':<18} {'depth':>7}  {'last heartbeat':<16} worker")
    unhealthy = 0
    for queue in ALL_QUEUES:
        depth = r.llen(queue.value)
        beat = read_heartbeat(r, queue.value)
        if beat is None:
            age_text, who = "never", "-"
            unhealthy += 1
        else:
            age = now - beat.ran_at
            age_text = f"{age:.0f} s ago" + (" (stale)" if age > stale_after else "")
            unhealthy += age > stale_after
            who = beat.worker
        click.echo(f"{queue.value:<18} {depth:>7}  {age_text:<16} {who}")
    echo_fleet_health(settings, r, now)
    echo_heartbeats(r, now)
    unhealthy += not echo_wallet_poll(settings, r, now)
    sys.exit(1 if unhealthy else 0)


def echo_heartbeats(r: Any, now: float) -> None:
    """The stream consumer's holder and cursor, and what the ingest made of the events."""
    from fleet.monitoring.ingest import ingest_counts
    from fleet.monitoring.stream_consumer import stream_status

    stream, counts = stream_status(r), ingest_counts(r)
    handed = stream.get("handed_on_at")
    when = f", last batch {now - float(handed):.0f} s ago" if handed else ""
    click.echo(
        f"event stream: {stream['lock_holder'] or 'no consumer'}, cursor {stream['cursor']}{when}"
    )
    rejected = ", ".join(f"{k} {v}" for k, v in counts["rejected"].items() if v) or "none"
    click.echo(
        f"heartbeats: {counts['accepted']} accepted, {counts['duplicate']} duplicate, "
        f"{counts['superseded']} superseded; rejected: {rejected}"
    )


def echo_fleet_health(settings: Settings, r: Any, now: float) -> None:
    """The last sweep's fleet view and the open alerts, under the queue table."""
    from fleet.monitoring.sweep import fleet_health, recent_sweeps, sweep_status

    fleets, meta = fleet_health(r)
    click.echo("")
    if not fleets:
        click.echo("fleet health: no sweep has finished yet")
    else:
        age = now - float(meta.get("finished_at") or now)
        click.echo(
            f"fleet health (sweep {meta.get('sweep_id')}, {age:.0f} s ago, took "
            f"{float(meta.get('wall_s') or 0):.1f} s)"
        )
        click.echo(
            f"{'fleet':<18} {'agents':>7} {'healthy':>8} {'degraded':>9} {'critical':>9} "
            f"{'unknown':>8} "
            f"{'p99 ms':>8} {'errors':>7} {'SLA ok':>7} {'burn $/h':>10}"
        )

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.1%}"

        for name, h in sorted(fleets.items(), key=lambda kv: (kv[0] == "*", kv[0])):
            if name == "*" and len(fleets) == 2:
                continue  # one fleet: its line is the total
            p99 = "-" if h["latency_p99"] is None else f"{h['latency_p99']:.0f}"
            click.echo(
                f"{'(all)' if name == '*' else name:<18} {h['agents']:>7} {h['healthy']:>8} "
                f"{h['degraded']:>9} "
                f"{h['critical']:>9} {h['unknown']:>8} {p99:>8} {pct(h['error_rate']):>7} "
                f"{pct(h['sla_compliance']):>7} {h['burn_rate_per_hour']:>10}"
            )
    running = [
        s
        for s in (sweep_status(r, sid) for sid in recent_sweeps(r, 1))
        if s and s["status"] == "running"
    ]
    for s in running:
        click.echo(
            f"sweep {s['sweep_id']} running: {s['agents_done']}/{s['agents']} agents, "
            f"{s['failed']} failed"
        )
    try:
        from fleet.durability.deadletters import open_count
        from fleet.monitoring.alerts import open_counts
        from fleet.storage.db import engine_for, session_factory

        sessions = session_factory(engine_for(settings.sqlalchemy_url))
        counts = open_counts(sessions)
        dead = open_count(sessions)
    except Exception as exc:  # noqa: BLE001 - status must print what it can
        click.echo(f"alerts: database not readable ({type(exc).__name__})")
        return
    order = ("emergency", "critical", "warning", "info")
    text = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s)) or "none"
    click.echo(f"open alerts: {text}" + ("  (`fleet alerts`)" if counts else ""))
    click.echo(f"dead letters: {dead or 'none'}" + ("  (`fleet dlq list`)" if dead else ""))


def echo_wallet_poll(settings: Settings, r: Any, now: float) -> bool:
    """The wallet poll's plan for the fleet as it is now (or why it cannot fit, with the
    numbers), its defects and what it costs; False when the plan is refused."""
    from fleet.monitoring.plan import PlanRefused
    from fleet.monitoring.sweep import (
        STATS_KEY,
        active_agents,
        compute_plan,
        monitoring_overhead,
    )
    from fleet.storage.db import engine_for, session_factory

    click.echo("")
    try:
        agents = active_agents(
            session_factory(engine_for(settings.sqlalchemy_url)), settings.metrics.statuses
        )
    except Exception as exc:  # noqa: BLE001 - status must print what it can
        click.echo(f"wallet plan: database not readable ({type(exc).__name__})")
        return True
    fits = True
    try:
        plan = compute_plan(
            agents,
            settings.policy,
            tick_s=settings.schedule.metrics_sweep_s,
            admin=bool(settings.gateway.admin_key.get_secret_value()),
        )
        click.echo(f"wallet plan: {plan.describe()}")
    except PlanRefused as refused:
        click.echo(refused.message)
        fits = False
    stats = r.hgetall(STATS_KEY)
    limited, paced = int(stats.get("rate_limited", 0)), int(stats.get("paced", 0))
    click.echo(
        f"plan defects: {limited} × 429 from the gateway, {paced} calls held back"
        + ("  (the plan overran a rate window)" if limited or paced else "")
    )
    overhead = monitoring_overhead(r, now)
    if not overhead:
        click.echo("monitoring overhead: no wallet reads in the last hour")
    for fleet, o in overhead.items():
        click.echo(
            f"monitoring overhead {fleet}: ${o.charged}/h ({o.calls:,} calls in the last hour)"
        )
    return fits
