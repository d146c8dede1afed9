"""`fleet economics`: monthly cost, ROI and break-even per segment, with the inputs used."""

from __future__ import annotations

import json

import click

from cli.commands.report import _finops_runtime
from cli.common import config_errors_exit


def _amount(a: dict[str, object]) -> str:
    return "unknown" if a.get("unknown") else f"{a['amount']}"


@click.command("economics")
@click.option("--fleet", "fleet_name", default=None, help="Fleet name (default FLEET_FLEET_NAME).")
@click.option("--week", default=None, help="The ISO week of ledger to use (default the last).")
@click.option("--json", "as_json", is_flag=True, help="The figures and their inputs as JSON.")
@config_errors_exit
def economics(fleet_name: str | None, week: str | None, as_json: bool) -> None:
    """Fleet economics (operations §3): per segment, monthly cost = tasks/day x calls/task x
    cost/call x days + provisioning + monitoring overhead; ROI and break-even against the
    policy's finops.value_per_task."""
    from fleet.finops import service
    from fleet.finops.rates import RateError
    from fleet.finops.review import ReviewError
    from fleet.gateway.errors import GatewayError
    from fleet.runtime import Runtime
    from tasks.finops import finops_deps

    rt = _finops_runtime()
    assert isinstance(rt, Runtime)
    try:
        econ = service.economics(finops_deps(rt), fleet_name or rt.settings.fleet_name, week)
    except ReviewError as exc:
        hint = "--week" if str(exc).startswith("week") else "--fleet"
        raise click.BadParameter(str(exc), param_hint=hint) from None
    except (RateError, GatewayError) as exc:
        click.echo(f"the gateway's exchange rate could not be read: {exc}", err=True)
        raise SystemExit(2) from None
    if as_json:
        click.echo(json.dumps(econ, indent=2, sort_keys=True))
        return
    cur = econ["currency"]
    click.echo(f"fleet {econ['fleet']}, from the ledger of {econ['week']}, in {cur}")
    click.echo(econ["formula"])
    click.echo(f"monitoring overhead {_amount(econ['monitoring_overhead_per_hour'])} per hour")
    for s in econ["segments"]:
        i = s["inputs"]
        click.echo(
            f"{s['segment']}: {i['agents']} agents, {i['tasks_per_day']} tasks/day x "
            f"{i['calls_per_task']} calls x {_amount(i['cost_per_call'])}/call x "
            f"{i['days_per_month']} days + provisioning {_amount(i['provisioning_per_month'])}"
            f" + monitoring {_amount(i['monitoring_overhead_per_month'])}"
            f" = {_amount(s['monthly_cost'])}/month; value {_amount(s['monthly_value'])}"
            f" (per task {_amount(i['value_per_task'])}); ROI {s['roi'] or 'unknown'};"
            f" break-even {s['break_even_tasks_per_day'] or 'none'} tasks/day"
        )
