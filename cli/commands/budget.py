"""`fleet budget …`: the state of a fleet's budgets; ask to resume its spending or to raise
a budget (both HIGH: an approval request another person approves with `fleet approvals`)."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from cli.common import config_errors_exit, settings_for_cli


def _runtime() -> Any:
    from fleet.storage.db import engine_for, migrate
    from workers.app import app
    from workers.runtime import on_demand

    migrate(engine_for(settings_for_cli().sqlalchemy_url))
    return on_demand(app)


@click.group("budget")
def budget_group() -> None:
    """Budgets: per task, per agent-hour, fleet-day ceiling, task pools; the spending pause."""


@budget_group.command("status")
@click.option("--fleet", default=None, help="The fleet (default FLEET_FLEET_NAME).")
@click.option("--json", "as_json", is_flag=True, help="The state as JSON.")
@config_errors_exit
def budget_status(fleet: str | None, as_json: bool) -> None:
    """Today's spend and holds against the fleet-day ceiling, the limits, any pause.
    Exits 1 when the fleet's spending is paused, 2 when the budget store does not answer."""
    import redis

    from fleet.budgets import control, ledger

    rt = _runtime()
    name = fleet or rt.settings.fleet_name
    try:
        state = rt.budgets.state(name)
        pending = ledger.pending(rt.redis)
    except redis.RedisError as exc:
        click.echo(f"budget store unreachable ({exc}): every admission is refused", err=True)
        raise SystemExit(2) from None
    state = {
        **state,
        "pauses": control.pauses(rt.sessions),
        "raised": control.raised_limits(rt.sessions),
        "ledger_pending": pending,
    }
    if as_json:
        click.echo(json.dumps(state, indent=2))
    else:
        day = state["fleet_day"]
        cur = state["currency"]
        click.echo(
            f"fleet {name}  day {state['day']} (UTC): {day['used']} of {day['limit']} {cur} "
            "spent or held"
        )
        click.echo(
            f"per task {state['per_task']} {cur}  per agent-hour {state['per_agent_hour']} {cur}"
            f"  reservations held {state['reservations_held']}  ledger rows queued {pending}"
        )
        for pool, total in state["pools"].items():
            click.echo(f"pool {pool}: {total} {cur}")
        for r in state["raised"]:
            click.echo(f"raised {r['budget']} {r['subject']} to {r['limit']} by {r['raised_by']}")
        if state["spending_paused"]:
            click.echo(f"SPENDING PAUSED: {state['paused_reason']}")
            click.echo(f"  resume: fleet budget resume {name} --by NAME (HIGH: needs an approval)")
    if state["spending_paused"]:
        raise SystemExit(1)


@budget_group.command("pause")
@click.argument("fleet")
@click.option("--by", "paused_by", required=True, help="Who pauses.")
@click.option("--reason", required=True, help="Why, for the audit trail.")
@config_errors_exit
def budget_pause(fleet: str, paused_by: str, reason: str) -> None:
    """Pause FLEET's spending now: every reservation is refused until a resume is approved."""
    from fleet.budgets import control
    from tasks.budgets import control_deps

    try:
        done = control.pause_spending(control_deps(_runtime()), fleet, paused_by, reason)
    except control.BudgetRequestError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"spending of {fleet}: {done['status']}; "
        f"resume with `fleet budget resume {fleet} --by NAME`"
    )


@budget_group.command("resume")
@click.argument("fleet")
@click.option("--by", "requested_by", required=True, help="Who asks.")
@click.option("--reason", default="", help="Why, for the approver and the audit trail.")
@config_errors_exit
def budget_resume(fleet: str, requested_by: str, reason: str) -> None:
    """Ask to lift FLEET's spending pause; runs once an approver (not you) approves."""
    from fleet.budgets import control
    from tasks.budgets import control_deps
    from workers.queues import TaskName

    rt = _runtime()
    gate = control.request_resume(
        control_deps(rt), fleet, requested_by, reason=reason, task=TaskName.BUDGET_RESUME
    )
    click.echo(
        f"resume spending of {fleet}: approval {gate.request_id} requested ({gate.risk.value}); "
        f"approve with `fleet approvals approve {gate.request_id} --by NAME`"
    )


@budget_group.command("raise")
@click.argument("budget", type=click.Choice(["per_task", "agent_hour", "fleet_day", "pool"]))
@click.argument("limit")
@click.option(
    "--subject",
    default="*",
    show_default=True,
    help="The fleet (per_task, fleet_day), agent (agent_hour) or pool; '*' for all.",
)
@click.option("--by", "requested_by", required=True, help="Who asks.")
@click.option("--reason", default="", help="Why, for the approver and the audit trail.")
@config_errors_exit
def budget_raise(budget: str, limit: str, subject: str, requested_by: str, reason: str) -> None:
    """Ask to raise BUDGET to LIMIT; runs once an approver (not you) approves."""
    from fleet.budgets import control
    from tasks.budgets import control_deps
    from workers.queues import TaskName

    try:
        amount = Decimal(limit)
    except InvalidOperation:
        raise click.BadParameter(f"not a decimal amount: {limit!r}", param_hint="LIMIT") from None
    rt = _runtime()
    try:
        gate = control.request_raise(
            control_deps(rt),
            budget,
            subject,
            amount,
            requested_by,
            reason=reason,
            task=TaskName.BUDGET_RAISE,
            fleet=subject if budget in ("fleet_day", "per_task") and subject != "*" else None,
        )
    except control.BudgetRequestError as exc:
        raise click.BadParameter(str(exc)) from None
    click.echo(
        f"raise {budget} of {subject} to {amount}: approval {gate.request_id} requested "
        f"({gate.risk.value}); approve with `fleet approvals approve {gate.request_id} --by NAME`"
    )
