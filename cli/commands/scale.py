"""`fleet scale …`: the autoscaler's segments and decisions; switch a segment to enforce
(HIGH: an approval request another person approves with `fleet approvals`) or back to
observe (at once)."""

from __future__ import annotations

import json
import re
from typing import Any

import click

from cli.common import config_errors_exit, settings_for_cli

SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _runtime() -> Any:
    from fleet.storage.db import engine_for, migrate
    from workers.app import app
    from workers.runtime import on_demand

    migrate(engine_for(settings_for_cli().sqlalchemy_url))
    return on_demand(app)


def _segment(_: click.Context, __: click.Parameter, value: str | None) -> str | None:
    if value is not None and not SEGMENT.match(value):
        raise click.BadParameter(
            f"{value!r} is not a segment (an agent id prefix: letters, digits, '.', '_', '-')"
        )
    return value


@click.group("scale")
def scale_group() -> None:
    """The autoscaler: per segment (agent id prefix), observe (log only) or enforce (act)."""


@scale_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@config_errors_exit
def scale_status(as_json: bool) -> None:
    """Each segment's mode, last action and cooldown."""
    from fleet.scaling.autoscaler import segment_views

    views = segment_views(_runtime().sessions)
    if as_json:
        click.echo(json.dumps(views, indent=2))
        return
    if not views:
        click.echo("no segments")
    for v in views:
        click.echo(
            f"{v['segment']:<32} {v['mode']:<8} last {v['last_action'] or '-'}"
            f" at {v['last_action_at'] or '-'}  cooldown until {v['cooldown_until'] or '-'}"
        )


@scale_group.command("decisions")
@click.option("--segment", default=None, callback=_segment, help="One segment only.")
@click.option("--limit", default=20, type=click.IntRange(1, 1000), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="As JSON, with every input.")
@config_errors_exit
def scale_decisions(segment: str | None, limit: int, as_json: bool) -> None:
    """The latest decisions, newest first, hold included, with what each saw."""
    from fleet.scaling.autoscaler import decisions

    rows = decisions(_runtime().sessions, segment=segment, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for d in rows:
        i = d["inputs"]
        click.echo(
            f"{d['decided_at']} {d['segment']} [{d['mode']}] {d['action']} {d['count']}: "
            f"{d['reason']} (pending {i.get('pending')}, healthy {i.get('healthy')}, "
            f"size {i.get('size')}, burn {i.get('burn')}/{i.get('burn_limit')})"
        )


@scale_group.command("enforce")
@click.argument("segment", callback=_segment)
@click.option("--by", "requested_by", required=True, help="Who asks.")
@click.option("--reason", required=True, help="Why the autoscaler should act on it.")
@config_errors_exit
def scale_enforce(segment: str, requested_by: str, reason: str) -> None:
    """Ask to let the autoscaler act on SEGMENT (HIGH: needs another person's approval)."""
    from fleet.scaling import enforce
    from fleet.scaling.autoscaler import ScalingError

    rt = _runtime()
    try:
        gate = enforce.request_enforce(
            rt.approvals, rt.sessions, segment, requested_by, reason=reason
        )
    except ScalingError as exc:
        raise click.ClickException(str(exc)) from None
    if gate.may_run:
        click.echo(f"{segment}: enforce ({gate.risk.value}: no approval needed)")
    else:
        click.echo(
            f"{segment}: enforce requested ({gate.risk.value}); approval {gate.request_id}\n"
            f"  another person approves: fleet approvals approve {gate.request_id}"
        )


@scale_group.command("observe")
@click.argument("segment", callback=_segment)
@click.option("--by", "requested_by", required=True, help="Who switches it.")
@click.option("--reason", required=True, help="Why.")
@config_errors_exit
def scale_observe(segment: str, requested_by: str, reason: str) -> None:
    """Back to observe: the autoscaler decides and logs, and acts on nothing (at once)."""
    from fleet.scaling import enforce
    from fleet.scaling.autoscaler import ScalingError

    rt = _runtime()
    try:
        enforce.set_observe(rt.approvals, rt.sessions, segment, requested_by, reason)
    except ScalingError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{segment}: observe")
