"""`fleet keys`: agents' gateway keys that only the operator can mint, and their identity keys.

The gateway grants no tier through its API: a pro key is minted with the
operator's own tooling and handed to Fleet Commander here. The key is proved
(a read made with it, the admin key list naming its tier), stored encrypted,
and an agent that was waiting for it goes back to provisioning. It is never
printed or logged.

``fleet keys identity AGENT`` hands out the Ed25519 identity key provisioning
made for the agent, for its deployment: the agent signs its heartbeats with it.
Each export is audited.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from cli.common import config_errors_exit, settings_for_cli
from fleet.gateway.errors import GatewayError
from fleet.provisioning import pipeline
from fleet.runtime import Runtime
from workers.queues import TaskName

# What the provision_agent message carries as its job: the agent's own job is in its record.
IMPORT_JOB = "key-import"


def import_key(rt: Runtime, agent_id: str, api_key: str, by: str) -> pipeline.KeyImport:
    """Import ``api_key`` for ``agent_id``; an agent that waited for it is sent back to work."""
    result = pipeline.import_agent_key(rt.provisioning, agent_id, api_key, by)
    if result.redispatch:
        rt.send([(TaskName.PROVISION_AGENT, {"job_id": IMPORT_JOB, "agent_id": agent_id})])
    return result


def read_secret(value: str, what: str = "KEY") -> str:
    """The key itself, or ``@FILE`` (``@-`` for stdin), so it need not sit in shell history."""
    if not value.startswith("@"):
        return value.strip()
    source = value[1:]
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(f"cannot read {source}: {exc.strerror}", param_hint=what) from None
    key = text.strip()
    if not key:
        raise click.BadParameter(f"{source} holds no key", param_hint=what)
    return key


@click.group("keys")
def keys_group() -> None:
    """Agents' gateway keys: import an operator-minted key, list who waits for one."""


@keys_group.command("import")
@click.argument("agent_id")
@click.argument("key_or_file", metavar="KEY_OR_@FILE")
@click.option("--by", "imported_by", required=True, help="Who imports it (recorded in the audit).")
@config_errors_exit
def import_cmd(agent_id: str, key_or_file: str, imported_by: str) -> None:
    """Hold AGENT_ID's gateway key, minted by the operator (e.g. a pro key).

    KEY_OR_@FILE is the key, or @FILE to read it from a file (@- from stdin).
    """
    from stack.processes import migrate_database
    from workers.app import app
    from workers.runtime import on_demand

    api_key = read_secret(key_or_file)
    migrate_database(settings_for_cli())
    rt = on_demand(app)
    try:
        result = import_key(rt, agent_id, api_key, imported_by)
    except (ValueError, LookupError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    except GatewayError as exc:
        raise click.ClickException(f"the gateway refused the key for {agent_id}: {exc}") from None
    then = "; provisioning resumes" if result.redispatch else ""
    click.echo(f"{agent_id}: {result.tier} key imported{then}")


@keys_group.command("waiting")
@config_errors_exit
def waiting() -> None:
    """List the agents waiting for an imported key, with what each waits for."""
    from fleet.storage.records import Agent
    from stack.processes import migrate_database
    from workers.app import app
    from workers.runtime import on_demand

    migrate_database(settings_for_cli())
    rt = on_demand(app)
    agents = pipeline.awaiting_key(rt.sessions)
    if not agents:
        click.echo("no agent is waiting for a key")
        return
    with rt.sessions() as s:
        for agent_id in agents:
            agent = s.get(Agent, agent_id)
            reason = agent.failure_reason if agent is not None else None
            click.echo(f"{agent_id}\t{reason or 'waiting for a key'}")


@keys_group.command("new-vault-key")
def new_vault_key_cmd() -> None:
    """Print a new random Fernet key for FLEET_SECRETS_KEY (put it first; keep the old ones
    after it, comma-separated, until `fleet keys rotate-vault` has run)."""
    from fleet.secrets import new_vault_key

    click.echo(new_vault_key())


@keys_group.command("rotate-vault")
@config_errors_exit
def rotate_vault_cmd() -> None:
    """Re-encrypt every stored agent key under the first key of FLEET_SECRETS_KEY.

    Tokens under an older key, or under a passphrase of the old SHA-256 scheme listed after
    it, are decrypted and encrypted again; afterwards the older entries can be removed.
    """
    from fleet.secrets import KeyVault, SecretsError, rotate_vault
    from fleet.storage.db import engine_for, session_factory
    from stack.processes import migrate_database

    settings = settings_for_cli()
    migrate_database(settings)
    try:
        vault = KeyVault(settings.secrets_key.get_secret_value())
        vault.check()
        done = rotate_vault(session_factory(engine_for(settings.sqlalchemy_url)), vault)
    except SecretsError as exc:
        raise click.ClickException(f"{exc}; nothing was changed") from None
    click.echo(
        f"{done.rotated} keys re-encrypted under the newest vault key, {done.current} already "
        f"were, across {done.agents} agents"
    )


@keys_group.command("identity")
@click.argument("agent_id")
@click.option("--by", "exported_by", required=True, help="Who exports it (recorded in the audit).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the key to this new file (mode 0600) instead of stdout.",
)
@config_errors_exit
def identity_cmd(agent_id: str, exported_by: str, out: Path | None) -> None:
    """Export AGENT_ID's identity key (64 hex, Ed25519) for the agent's deployment.

    The agent signs its heartbeats with it (`fleet heartbeat run --identity-key @FILE`).
    """
    from fleet.secrets import SecretsError
    from stack.processes import migrate_database
    from workers.app import app
    from workers.runtime import on_demand

    migrate_database(settings_for_cli())
    rt = on_demand(app)
    try:
        private = pipeline.export_identity_key(rt.provisioning, agent_id, exported_by)
    except (LookupError, SecretsError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    if out is None:
        click.echo(private)
        return
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise click.ClickException(f"cannot create {out}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(private + "\n")
    click.echo(f"{agent_id}: identity key written to {out}")
