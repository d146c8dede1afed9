"""`fleet control …`: the kill switch. Pause the whole control loop, freeze an agent or a
fleet (each at once, audited with --by); resuming and releasing are approval requests
another person approves with `fleet approvals approve`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from cli.common import config_errors_exit, settings_for_cli


def _runtime() -> Any:
    from fleet.storage.db import engine_for, migrate
    from workers.app import app
    from workers.runtime import on_demand

    migrate(engine_for(settings_for_cli().sqlalchemy_url))
    return on_demand(app)


def _run(fn: Callable[..., Any], *args: Any) -> Any:
    from fleet.control import ControlError

    try:
        return fn(_runtime().control, *args)
    except ControlError as exc:
        raise click.UsageError(str(exc)) from None


def _done(out: dict[str, Any]) -> None:
    click.echo(json.dumps(out, indent=2, default=str))


by_option = click.option("--by", "by", required=True, help="Who acts (audited).")
reason_option = click.option("--reason", required=True, help="Why (audited, shown to approvers).")


@click.group("control")
def control_group() -> None:
    """The kill switch: control-loop pause, agent and fleet freezes."""


@control_group.command("status")
@config_errors_exit
def control_status() -> None:
    """What holds now and which releases wait for approval. Exits 1 while the loop is paused."""
    from fleet import control

    state = control.state(_runtime().control)
    _done(state)
    if state["loop"]["paused"]:
        raise SystemExit(1)


@control_group.command("pause")
@by_option
@reason_option
@config_errors_exit
def control_pause(by: str, reason: str) -> None:
    """Pause the control loop: no sweeps, no escalation actions, no dispatch, no provisioning."""
    from fleet import control

    _done(_run(control.pause_loop, by, reason))


@control_group.command("resume")
@by_option
@reason_option
@config_errors_exit
def control_resume(by: str, reason: str) -> None:
    """Ask to resume the control loop (HIGH: another person approves)."""
    from fleet import control

    gate = _run(control.request_resume, by, reason)
    click.echo(
        f"resume the control loop: approval {gate.request_id} requested ({gate.risk.value}); "
        f"approve with `fleet approvals approve {gate.request_id} --by NAME`"
    )


@control_group.command("freeze-agent")
@click.argument("agent_id")
@by_option
@reason_option
@config_errors_exit
def control_freeze_agent(agent_id: str, by: str, reason: str) -> None:
    """Pause AGENT_ID and freeze its wallet at the gateway."""
    from fleet import control

    _done(_run(control.freeze_agent, agent_id, by, reason))


@control_group.command("release-agent")
@click.argument("agent_id")
@by_option
@reason_option
@config_errors_exit
def control_release_agent(agent_id: str, by: str, reason: str) -> None:
    """Ask to release AGENT_ID (release_agent, HIGH)."""
    from fleet import control

    _done(_run(control.request_agent_release, agent_id, by, reason))


@control_group.command("freeze-fleet")
@click.argument("fleet")
@by_option
@reason_option
@config_errors_exit
def control_freeze_fleet(fleet: str, by: str, reason: str) -> None:
    """Pause every active agent of FLEET and freeze their wallets."""
    from fleet import control

    _done(_run(control.freeze_fleet, fleet, by, reason))


@control_group.command("release-fleet")
@click.argument("fleet")
@by_option
@reason_option
@config_errors_exit
def control_release_fleet(fleet: str, by: str, reason: str) -> None:
    """Ask to release FLEET (release_fleet, HIGH)."""
    from fleet import control

    gate = _run(control.request_fleet_release, fleet, by, reason)
    click.echo(
        f"release fleet {fleet}: approval {gate.request_id} requested ({gate.risk.value}); "
        f"approve with `fleet approvals approve {gate.request_id} --by NAME`"
    )
