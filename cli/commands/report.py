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
