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
@click.option("--no-gateway", is_flag=True, help="Only our own evidence; do not ask the gateway.")
@config_errors_exit
def report_compliance(fleet_name: str | None, period: str | None, no_gateway: bool) -> None:
    """Per article 9, 11, 12, 13, 14, 15: our evidence merged with the gateway's, as JSON and
    HTML."""
    from fleet.audit.compliance import previous_month, produce_report
    from fleet.clock import SystemClock
    from fleet.gateway import GatewayClient

    settings = settings_for_cli()
    log, service = audit_context(settings)
    client = None if no_gateway else GatewayClient.from_settings(settings)
    try:
        report, json_path, html_path = produce_report(
            settings,
            log,
            service,
            fleet_name or settings.fleet_name,
            period or previous_month(SystemClock().now()),
            client.call if client else None,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--period") from None
    finally:
        if client is not None:
            client.close()
    for section in report["articles"].values():
        click.echo(f"Art. {section['article']:<3} {section['status']:<10} {section['title']}")
    if report["gateway"].get("error"):
        click.echo(f"gateway: {report['gateway']['error']}", err=True)
    click.echo(f"written {json_path} and {html_path}")
