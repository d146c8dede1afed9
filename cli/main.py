"""`fleet`: run and operate Fleet Commander from a terminal.

The root group; every command lives in its own module under `cli/commands/`.
"""

from __future__ import annotations

import click

from cli.commands import (
    alerts,
    approvals,
    audit,
    bench,
    budget,
    config,
    control,
    dlq,
    economics,
    heartbeat,
    identity,
    keys,
    probe,
    provisioning,
    report,
    scale,
    services,
    sla,
    status,
    stream,
    up,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Fleet Commander: the control plane for a fleet of AI agents.

    \b
    Start everything locally:   fleet up        (add --demo for a small simulated fleet)
    Check the system:           fleet status
    Run one part on its own:    fleet sandbox | fleet worker QUEUE | fleet beat | fleet flower

    Settings come from FLEET_* environment variables and an optional .env file
    (see `fleet config`); the domain policy from config/defaults/policy.yaml.
    """


# Running the system
main.add_command(up.up)
main.add_command(services.sandbox)
main.add_command(services.worker)
main.add_command(services.api)
main.add_command(services.beat)
main.add_command(services.flower)
main.add_command(stream.stream)
# Looking at it
main.add_command(status.status)
main.add_command(alerts.alerts_cmd)
main.add_command(config.show_config)
main.add_command(probe.probe)
main.add_command(dlq.dlq_group)
# Provisioning
main.add_command(provisioning.validate)
main.add_command(provisioning.manifest_schema)
main.add_command(provisioning.provision)
main.add_command(provisioning.retire)
main.add_command(provisioning.upgrade)
main.add_command(provisioning.db)
main.add_command(keys.keys_group)
main.add_command(heartbeat.heartbeat_group)
# SLA, audit, oversight
main.add_command(sla.sla_group)
main.add_command(audit.audit_group)
main.add_command(approvals.approvals_group)
main.add_command(identity.users_group)
main.add_command(identity.tokens_group)
main.add_command(identity.login)
main.add_command(report.report_group)
# Measuring it
main.add_command(bench.bench)
main.add_command(budget.budget_group)
main.add_command(economics.economics)

main.add_command(control.control_group)

main.add_command(scale.scale_group)


if __name__ == "__main__":  # pragma: no cover
    main()
