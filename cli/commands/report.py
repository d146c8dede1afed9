"""`fleet report …`: reports for people and regulators."""

from __future__ import annotations

import click

from cli.common import audit_context, config_errors_exit, settings_for_cli


@click.group("report")
def report_group() -> None:
    """Reports for people and regulators."""


@report_group.command("compliance")
@click.option("--fleet", "fleet_name", default=None, help="Fleet name (default FLEET_FLEET_NAME).")
@click.option(
    "--period",
    default=None,
    help="A month (2026-05) or days up to now (30d); default the last month.",
)
@config_errors_exit
def report_compliance(fleet_name: str | None, period: str | None) -> None:
    """Per article 9, 11, 12, 13, 14, 15: our own evidence, as JSON and HTML."""
    from fleet.audit.compliance import previous_month, produce_report
    from fleet.clock import SystemClock

    settings = settings_for_cli()
    log, service = audit_context(settings)
    try:
        report, json_path, html_path = produce_report(
            settings,
            log,
            service,
            fleet_name or settings.fleet_name,
            period or previous_month(SystemClock().now()),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--period") from None
    for section in report["articles"].values():
        click.echo(f"Art. {section['article']:<3} {section['status']:<10} {section['title']}")
    click.echo(f"written {json_path} and {html_path}")


def _finops_runtime() -> object:
    from fleet.storage.db import engine_for, migrate
    from workers.app import app
    from workers.runtime import on_demand

    migrate(engine_for(settings_for_cli().sqlalchemy_url))
    return on_demand(app)


@report_group.command("finops")
@click.option("--fleet", "fleet_name", default=None, help="Fleet name (default FLEET_FLEET_NAME).")
@click.option("--week", default=None, help="An ISO week, 2026-W48 (default the week before).")
@click.option(
    "--format", "fmt", type=click.Choice(["json", "html"]), default="json", show_default=True
)
@click.option(
    "--out", type=click.Path(dir_okay=False, writable=True), default=None, help="Write it here."
)
@config_errors_exit
def report_finops(fleet_name: str | None, week: str | None, fmt: str, out: str | None) -> None:
    """The weekly FinOps review: budget vs actual per segment, cost per task and its trend,
    model mix, the most expensive tasks, volume discounts, fleet economics. Also kept under
    the report directory (finops/FLEET-WEEK.json and .html)."""
    import json
    from pathlib import Path

    from fleet.finops import render, service
    from fleet.finops.rates import RateError
    from fleet.finops.review import ReviewError
    from fleet.gateway.errors import GatewayError
    from fleet.runtime import Runtime
    from tasks.finops import finops_deps

    rt = _finops_runtime()
    assert isinstance(rt, Runtime)
    deps = finops_deps(rt)
    try:
        review = service.review(deps, fleet_name or rt.settings.fleet_name, week)
    except ReviewError as exc:
        hint = "--week" if str(exc).startswith("week") else "--fleet"
        raise click.BadParameter(str(exc), param_hint=hint) from None
    except (RateError, GatewayError) as exc:
        click.echo(f"the gateway's rates or discounts could not be read: {exc}", err=True)
        raise SystemExit(2) from None
    service.save(review, deps.report_dir)
    text = (
        json.dumps(review, indent=2, sort_keys=True) + "\n"
        if fmt == "json"
        else render.review_html(review)
    )
    if out:
        Path(out).write_text(text, encoding="utf-8")
        flagged = ", ".join(review["flagged_segments"]) or "none"
        click.echo(f"written {out} (segments over budget: {flagged})")
    else:
        click.echo(text, nl=False)
