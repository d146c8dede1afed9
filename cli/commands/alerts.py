"""`fleet alerts`: the alerts raised by monitoring and the SLA checks."""

from __future__ import annotations

import click

from cli.common import config_errors_exit, settings_for_cli


@click.command("alerts")
@click.option("--all", "show_all", is_flag=True, help="Resolved alerts too, newest first.")
@click.option(
    "--severity", type=click.Choice(["info", "warning", "critical", "emergency"]), default=None
)
@click.option("--subject", default=None, help="One agent id or fleet name.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_errors_exit
def alerts_cmd(
    show_all: bool, severity: str | None, subject: str | None, limit: int, as_json: bool
) -> None:
    """List open alerts (one per condition while it holds), newest first."""
    import json

    from fleet.monitoring.alerts import list_alerts
    from fleet.storage.db import engine_for, migrate, session_factory

    settings = settings_for_cli()
    engine = engine_for(settings.sqlalchemy_url)
    migrate(engine)
    rows = list_alerts(
        session_factory(engine),
        open_only=not show_all,
        severity=severity,
        subject=subject,
        limit=limit,
    )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no alerts" if show_all else "no open alerts")
        return
    click.echo(
        f"{'fired (UTC)':<20} {'severity':<9} {'state':<8} {'rule':<26} {'subject':<32} value"
    )
    for a in rows:
        fired = a["fired_at"][:19].replace("T", " ")
        click.echo(
            f"{fired:<20} {a['severity']:<9} {a['state']:<8} {a['rule']:<26} {a['subject']:<32} "
            f"{a['value']}" + (f" (threshold {a['threshold']})" if a["threshold"] else "")
        )
