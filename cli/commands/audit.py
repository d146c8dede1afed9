"""`fleet audit …`: verify, export and archive the tamper-evident audit log."""

from __future__ import annotations

import sys
from typing import Any

import click

from cli.common import audit_context, config_errors_exit, settings_for_cli


def _parse_when(value: str | None) -> Any:
    from datetime import UTC, datetime

    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or time (e.g. 2026-01-31 or 2026-01-31T12:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log: verify it, export it, archive it."""


@audit_group.command("verify")
@click.option(
    "--public-key",
    default=None,
    help="Check signatures with this key (hex, or a PEM file) instead of the pinned "
    "FLEET_AUDIT__PUBLIC_KEY.",
)
@click.option(
    "--witness-bus/--no-witness-bus",
    default=None,
    help="Also hold the log to the checkpoints on the gateway's event bus "
    "(default: FLEET_AUDIT__WITNESS_BUS).",
)
@click.option(
    "--export",
    "export_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Verify an export file alone, as a third party would.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@config_errors_exit
def audit_verify(
    public_key: str | None, witness_bus: bool | None, export_file: str | None, as_json: bool
) -> None:
    """Re-compute the hash chain, the chained signed checkpoints and the archive anchors, hold
    them to the witnesses, and name the first problem (edited, deleted, inserted, reordered,
    rewritten, forged anchor, truncated, rolled back).

    Only the pinned public key is trusted. Exit status 0 only when the log is intact.
    """
    import json
    from pathlib import Path

    from fleet.audit.signing import UnpinnedKey, load_public_key

    key = None
    if public_key:
        key_text = Path(public_key).read_text() if Path(public_key).is_file() else public_key
        key = load_public_key(key_text)
    if export_file:
        from fleet.audit.export import verify_export

        check = verify_export(Path(export_file), key)
        for line in check.problems:
            click.echo(f"problem: {line}")
        for line in check.warnings:
            click.echo(f"note: {line}")
        state = "intact" if check.ok else "TAMPERED"
        click.echo(
            f"{state}: {check.entries} entries ({check.first_seq}..{check.last_seq}), "
            f"{check.checkpoints} valid checkpoints, key {check.key_id}"
        )
        sys.exit(0 if check.ok else 1)

    from fleet.audit.verify import verify_log

    settings = settings_for_cli()
    log, _ = audit_context(settings)
    witnesses = [log.witness.read()] if log.witness is not None else []
    if witness_bus if witness_bus is not None else settings.audit.witness_bus:
        witnesses.append(_bus_witness(settings, log.chain))
    try:
        report = verify_log(log, key, witnesses=witnesses)
    except UnpinnedKey as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for warning in report.warnings[:20]:
            click.echo(f"note: {warning}")
        click.echo(report.summary())
        click.echo(f"checked in {report.seconds:.2f} s")
    sys.exit(0 if report.ok else 1)


def _bus_witness(settings: Any, chain: str) -> Any:
    from fleet.audit.witness import bus_records
    from fleet.gateway import GatewayClient
    from fleet.gateway.errors import GatewayError

    try:
        with GatewayClient.from_settings(settings) as gateway:
            return bus_records(gateway, chain)
    except GatewayError as exc:
        raise click.ClickException(f"cannot read the event bus witness: {exc}") from None


@audit_group.command("export")
@click.option("--since", default=None, help="First day or time (ISO 8601, UTC unless given).")
@click.option("--until", default=None, help="End (exclusive), ISO 8601.")
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default="-",
    show_default=True,
    help="File to write; - for standard output.",
)
@config_errors_exit
def audit_export(since: str | None, until: str | None, fmt: str, output: str) -> None:
    """Export entries with their hashes, the checkpoints and the public key, for a regulator.

    The export verifies on its own: `fleet audit verify --export FILE`.
    """
    from fleet.audit.export import export_log

    settings = settings_for_cli()
    log, _ = audit_context(settings)
    out = click.open_file(output, "wb")
    with out:
        summary = export_log(log, out, fmt=fmt, since=_parse_when(since), until=_parse_when(until))  # type: ignore[arg-type]
    click.echo(
        f"exported {summary.entries} entries ({summary.first_seq}..{summary.last_seq}) "
        f"and {summary.checkpoints} checkpoints; key {log.signer.key_id}",
        err=True,
    )


@audit_group.command("init-key")
@click.option(
    "--if-missing",
    is_flag=True,
    help="a key that exists is kept and the command succeeds (for a deployment's one-shot)",
)
@config_errors_exit
def audit_init_key(if_missing: bool) -> None:
    """Create the checkpoint signing key, once, and print the public key to pin.

    Refuses if a key exists: the key that signed the log is never replaced. Mount
    the key file read-only into the audit workers; verifiers need only the public key.
    """
    from fleet.audit.log import AuditFiles
    from fleet.audit.signing import SigningKeyExists, init_signing_key, load_signer

    path = AuditFiles.from_settings(settings_for_cli()).signing_key
    try:
        signer = init_signing_key(path)
    except SigningKeyExists as exc:
        if not if_missing:
            raise click.ClickException(str(exc)) from None
        signer = load_signer(path)
        click.echo(f"the audit signing key {path} exists: kept")
        click.echo(f"FLEET_AUDIT__PUBLIC_KEY={signer.public_hex}")
        return
    click.echo(f"created the audit signing key {path} (mode 0400; mount it read-only)")
    click.echo(signer.public_pem().rstrip())
    click.echo("# pin it in every process's configuration, e.g. the environment:")
    click.echo(f"FLEET_AUDIT__PUBLIC_KEY={signer.public_hex}")


@audit_group.command("public-key")
@config_errors_exit
def audit_public_key() -> None:
    """Print the public key of the signing key (PEM and hex), and whether it is the pinned one."""
    from fleet.audit.log import AuditFiles
    from fleet.audit.signing import MissingSigningKey, load_signer

    settings = settings_for_cli()
    try:
        signer = load_signer(AuditFiles.from_settings(settings).signing_key)
    except MissingSigningKey as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(signer.public_pem().rstrip())
    click.echo(f"# key id {signer.key_id}; raw {signer.public_hex}")
    pinned = settings.audit.public_key
    if pinned is None:
        click.echo(f"# not pinned: set FLEET_AUDIT__PUBLIC_KEY={signer.public_hex}")
    elif pinned.lower() != signer.public_hex:
        click.echo("# WARNING: this is not the pinned FLEET_AUDIT__PUBLIC_KEY")


@audit_group.command("archive")
@config_errors_exit
def audit_archive() -> None:
    """Archive entries older than the retention period now (beat does it daily)."""
    from fleet.audit.retention import RetentionRefused, archive_expired

    settings = settings_for_cli()
    log, _ = audit_context(settings)
    try:
        result = archive_expired(
            log,
            settings.policy.retention.audit_days,
            respect_mirror=settings.policy.audit.mirror_enabled,
        )
    except RetentionRefused as exc:
        raise click.ClickException(str(exc)) from None
    if result is None:
        click.echo(f"nothing older than {settings.policy.retention.audit_days:g} days to archive")
    else:
        click.echo(f"archived entries {result.first_seq}..{result.last_seq} to {result.file}")
