"""`fleet config`: the effective settings and whether the policy file is valid."""

from __future__ import annotations

import click

from cli.common import config_errors_exit, settings_for_cli


@click.command("config")
@config_errors_exit
def show_config() -> None:
    """Print the effective settings (secrets masked) and validate the policy file."""
    settings = settings_for_cli()
    click.echo(settings.model_dump_json(indent=2))
    click.echo(
        f"# policy: {settings.policy_file} ({len(settings.policy.sla_templates)} SLA templates) — "
        "valid"
    )
