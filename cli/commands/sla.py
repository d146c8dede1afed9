"""`fleet sla …`: episodes, the tiers they reached, error budgets; acknowledge, check, sweep."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cli.common import config_errors_exit, settings_for_cli
from config.settings import Settings


def _context(settings: Settings) -> tuple[Any, Any]:
    """Sessions on the configured database (schema up to date) and Redis, or None if unreachable."""
    import redis

    from fleet.hotstate import connect
    from fleet.storage.db import engine_for, migrate, session_factory

    engine = engine_for(settings.sqlalchemy_url)
    migrate(engine)
    r = connect(settings.redis_url)
    try:
        r.ping()
    except redis.RedisError:
        return session_factory(engine), None
    return session_factory(engine), r


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0, int(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _budget_line(name: str, b: dict[str, Any]) -> str:
    tte = b["time_to_exhaustion_s"]
    return (
        f"{name:<28} budget left {b['remaining_pct']:>7.2f} %  "
        f"({b['consumed_minutes']:.1f} of {b['allowed_minutes']:.0f} min over {b['window_days']:g} "
        "d"
        + (f", {b['agents']} agents" if b["scope"].startswith("fleet:") else "")
        + f")  burn {b['recent_burn_rate']:.2f}x last hour  exhausted in {_duration(tte)}"
    )


def _tiers(escalations: list[dict[str, Any]]) -> str:
    marks = []
    for e in sorted(escalations, key=lambda x: x["tier"] or 5):  # the recovery stage (tier 0) last
        name = "resolved" if e["tier"] == 0 else f"T{e['tier']}"
        marks.append(f"{name}:{e['status']}")
    return " ".join(marks) or "-"


def _print_episode(e: dict[str, Any]) -> None:
    state = e["state"] + (" (recovering)" if e["state"] == "open" and e["compliant_streak"] else "")
    ack = (
        f"  acked by {e['acked_by']} until {e['ack_until'][11:16]}" if e.get("acknowledged") else ""
    )
    click.echo(
        f"  {e['episode_id']}  {e['agent_id']:<28} {state:<20} {_duration(e['duration_s']):>8}  "
        f"tier {e['tier_reached']}  [{_tiers(e['escalations'])}]  "
        f"{','.join(e['breached_terms'])}{ack}"
    )


@click.group("sla")
def sla_group() -> None:
    """SLA enforcement: violation episodes, escalation tiers, error budgets."""


@sla_group.command("status")
@click.argument("agent_id", required=False)
@click.option("--fleet", "fleet_name", default=None, help="Only this fleet.")
@click.option(
    "--limit", type=int, default=50, show_default=True, help="Episodes listed per section."
)
@click.option("--json", "as_json", is_flag=True)
@config_errors_exit
def sla_status(agent_id: str | None, fleet_name: str | None, limit: int, as_json: bool) -> None:
    """Episodes, the tiers they reached and the error budget left (of the fleet, or of AGENT_ID)."""
    from fleet.clock import SystemClock
    from fleet.sla.status import agent_report, fleet_report

    settings = settings_for_cli()
    sessions, r = _context(settings)
    now = SystemClock().now()
    if agent_id:
        report = agent_report(sessions, settings.policy, now, agent_id, r=r, limit=limit)
        if report is None:
            click.echo(f"fleet: no agent {agent_id!r}", err=True)
            sys.exit(1)
        if as_json:
            click.echo(json.dumps(report, indent=2, default=str))
            return
        click.echo(
            f"{agent_id}  fleet {report['fleet']}  {report['status']}  traffic weight "
            f"{report['traffic_weight']}  "
            f"SLA {report['sla_template']} ({report['sla_id'] or 'template terms'})"
        )
        click.echo(_budget_line("error budget", report["budget"]))
        sample = report["last_sample"]
        if sample:
            click.echo(
                f"last check {sample['at'][:19]}: {sample['verdict']} (from {sample['source']})"
                + (f" {sample['terms']}" if sample.get("terms") else "")
                + (f" — {sample['note']}" if sample.get("note") else "")
            )
        for alert in report["alerts"]:
            click.echo(f"ALERT {alert['severity']} {alert['rule']} since {alert['fired_at'][:19]}")
        click.echo(f"episodes ({len(report['episodes'])}):")
        for e in report["episodes"]:
            _print_episode(e)
            for x in e["escalations"]:
                detail = x["result"].get("error") or ", ".join(
                    f"{k}={v}"
                    for k, v in x["result"].items()
                    if k
                    in (
                        "message_id",
                        "after",
                        "release_request",
                        "dispute_id",
                        "webhook_status",
                        "remediation",
                    )
                )
                click.echo(
                    f"      tier {x['tier']} {x['action']:<9} {x['status']:<8} on "
                    f"{x['queue'] or '-':<17} "
                    f"sent at {_duration(x['episode_age_s'])}  {detail}"
                )
        for d in report["disputes"]:
            click.echo(
                f"dispute {d['dispute_id']} with {d['counterparty']}: {d['status']}"
                + (
                    f", {d['resolution']} {d['refund']} of {d['claimed']}"
                    if d["resolution"]
                    else ""
                )
            )
        return
    report = fleet_report(sessions, settings.policy, now, fleet=fleet_name, r=r, limit=limit)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    for name, b in report["budgets"].items():
        click.echo(_budget_line(f"fleet {name}", b))
    for alert in report["alerts"]:
        click.echo(
            f"ALERT {alert['severity']:<6} {alert['rule']:<12} {alert['scope']} since "
            f"{alert['fired_at'][:19]}"
        )
    sweep = report["last_sweep"]
    if sweep:
        took = (
            f"in {sweep['duration_s']:.1f} s"
            if "duration_s" in sweep
            else f"{sweep['done']}/{sweep['total']} so far"
        )
        click.echo(
            f"last sweep: {sweep['total']} agents {took}, {sweep['breaches']} in breach, "
            f"{sweep['failed']} failed"
        )
    click.echo(f"open episodes ({len(report['open_episodes'])}):")
    for e in report["open_episodes"][:limit]:
        _print_episode(e)
    if len(report["open_episodes"]) > limit:
        click.echo(f"  … and {len(report['open_episodes']) - limit} more (--limit, or --json)")
    click.echo(f"recently closed ({len(report['recently_closed'])}):")
    for e in report["recently_closed"]:
        _print_episode(e)


@sla_group.command("episode")
@click.argument("episode_id")
@config_errors_exit
def sla_episode(episode_id: str) -> None:
    """One episode in full (JSON): tiers with their results, disputes."""
    from fleet.clock import SystemClock
    from fleet.sla.status import episode_detail

    sessions, _ = _context(settings_for_cli())
    detail = episode_detail(sessions, episode_id, SystemClock().now())
    if detail is None:
        click.echo(f"fleet: no episode {episode_id!r}", err=True)
        sys.exit(1)
    click.echo(json.dumps(detail, indent=2, default=str))


@sla_group.command("ack")
@click.argument("episode_id")
@click.option("--note", default="", help="What you are doing about it.")
@config_errors_exit
def sla_ack(episode_id: str, note: str) -> None:
    """Acknowledge EPISODE_ID as yourself: tiers 3-4 wait until the acknowledgement times out."""
    from cli.api_client import call

    settings = settings_for_cli()
    ep = call(settings, "POST", f"/api/v1/sla/episodes/{episode_id}/ack", json_body={"note": note})
    held = ", ".join(str(t) for t in settings.policy.escalation.ack_pauses_tiers)
    click.echo(
        f"{ep['episode_id']} acknowledged by {ep['acked_by']}; tiers {held} held until "
        f"{ep['ack_until'][:19].replace('T', ' ')} UTC"
    )


@sla_group.command("check")
@click.argument("agent_id")
@click.option(
    "--source", default="operator", show_default=True, help="Recorded as what asked for the check."
)
@click.option(
    "--counterparty", default=None, help="Who the breach hurts (tier 3 files a dispute for them)."
)
@click.option("--amount", default=None, help="What the counterparty claims, a decimal string.")
@config_errors_exit
def sla_check(agent_id: str, source: str, counterparty: str | None, amount: str | None) -> None:
    """Send AGENT_ID to the sla queue to be checked now (sla.evaluate_agent)."""
    from workers.app import create_producer

    settings = settings_for_cli()
    app = create_producer(settings)
    kwargs = {
        "agent_id": agent_id,
        "source": source,
        "counterparty": counterparty,
        "amount": amount,
    }
    result = app.send_task(
        "sla.evaluate_agent",
        kwargs={k: v for k, v in kwargs.items() if v is not None},
        ignore_result=True,
    )
    click.echo(f"sent sla.evaluate_agent for {agent_id} ({result.id})")


@sla_group.command("sweep")
@config_errors_exit
def sla_sweep() -> None:
    """Start a compliance sweep of the whole fleet now."""
    from workers.app import create_producer

    app = create_producer(settings_for_cli())
    result = app.send_task("sla.sweep", kwargs={"force": True}, ignore_result=True)
    click.echo(f"sent sla.sweep ({result.id}); follow it with `fleet sla status`")


@sla_group.command("templates")
@config_errors_exit
def sla_templates() -> None:
    """The SLA templates of the policy (validated when it was loaded)."""
    from fleet.sla.contracts import templates

    for name, terms in templates(settings_for_cli().policy).items():
        click.echo(f"{name}: " + ", ".join(f"{k}={v}" for k, v in terms.items()))
