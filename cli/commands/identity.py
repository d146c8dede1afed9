"""`fleet users …`, `fleet tokens …`, `fleet login`: who may call the API.

Accounts and service tokens are managed on the host that holds the database
(that access is already the keys to the kingdom); everyone else signs in
with `fleet login` and decides through the API.
"""

from __future__ import annotations

import sys

import click

from cli.common import config_errors_exit, settings_for_cli
from config.settings import Settings
from fleet.identity import Identities, IdentityError, Permission, Role


def _identities(settings: Settings) -> Identities:
    from fleet.clock import SystemClock
    from fleet.storage.db import engine_for, migrate, session_factory

    engine = engine_for(settings.sqlalchemy_url)
    migrate(engine)
    return Identities.from_settings(settings, session_factory(engine), SystemClock())


def _fail(exc: Exception) -> None:
    click.echo(f"fleet: {exc}", err=True)
    sys.exit(1)


def _password_from(stdin: bool, prompt: str) -> tuple[str, bool]:
    """(password, generated): from stdin with --password-stdin, else generated."""
    from fleet.identity.hashing import generated_password

    if stdin:
        return sys.stdin.readline().rstrip("\n"), False
    return generated_password(), True


@click.group("users")
def users_group() -> None:
    """Accounts of people: viewer < operator < approver < admin."""


@users_group.command("add")
@click.argument("username")
@click.option(
    "--role", type=click.Choice([r.label for r in Role]), required=True, help="What they may do."
)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@config_errors_exit
def users_add(username: str, role: str, password_stdin: bool) -> None:
    """Create USERNAME; prints a generated password once unless --password-stdin."""
    password, generated = _password_from(password_stdin, "password")
    try:
        _identities(settings_for_cli()).add_user(username, Role.parse(role), password)
    except IdentityError as exc:
        _fail(exc)
    click.echo(f"user {username} ({role}) created")
    if generated:
        click.echo(f"password: {password}   (shown once; change it with `fleet users passwd`)")


@users_group.command("list")
@config_errors_exit
def users_list() -> None:
    """Every account, its role and whether it is disabled."""
    for user in _identities(settings_for_cli()).list_users():
        state = "disabled" if user.disabled else "enabled"
        click.echo(
            f"{user.username:<24} {user.role:<9} {state:<9} since {user.created_at:%Y-%m-%d}"
        )


@users_group.command("disable")
@click.argument("username")
@config_errors_exit
def users_disable(username: str) -> None:
    """Disable USERNAME and end their sessions."""
    try:
        _identities(settings_for_cli()).set_disabled(username, True)
    except IdentityError as exc:
        _fail(exc)
    click.echo(f"user {username} disabled; their sessions are ended")


@users_group.command("enable")
@click.argument("username")
@config_errors_exit
def users_enable(username: str) -> None:
    try:
        _identities(settings_for_cli()).set_disabled(username, False)
    except IdentityError as exc:
        _fail(exc)
    click.echo(f"user {username} enabled")


@users_group.command("passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
@config_errors_exit
def users_passwd(username: str, password_stdin: bool) -> None:
    """Set a new password (generated and printed once unless --password-stdin); ends sessions."""
    password, generated = _password_from(password_stdin, "new password")
    try:
        _identities(settings_for_cli()).set_password(username, password)
    except IdentityError as exc:
        _fail(exc)
    click.echo(f"password of {username} changed; their sessions are ended")
    if generated:
        click.echo(f"password: {password}   (shown once)")


@click.group("tokens")
def tokens_group() -> None:
    """Service tokens: what another system may do, scope by scope."""


@tokens_group.command("add")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice([p.value for p in Permission if p is not Permission.IDENTITY_ADMIN]),
    help="A permission it holds (repeat).",
)
@click.option("--ttl-days", type=click.IntRange(1, 3650), default=None, help="Expires after.")
@config_errors_exit
def tokens_add(name: str, scopes: tuple[str, ...], ttl_days: int | None) -> None:
    """Issue a service token NAME; prints it once (e.g. --scope provisioning:submit for CI)."""
    try:
        token, view = _identities(settings_for_cli()).add_token(
            name, list(scopes), ttl_s=ttl_days * 86400 if ttl_days else None
        )
    except (IdentityError, ValueError) as exc:
        _fail(exc)
        return
    click.echo(f"token {name} ({', '.join(view.scopes)}) issued")
    click.echo(f"token: {token}   (shown once; send it as Authorization: Bearer …)")


@tokens_group.command("list")
@config_errors_exit
def tokens_list() -> None:
    for t in _identities(settings_for_cli()).list_tokens():
        state = "revoked" if t.revoked_at else "active"
        click.echo(f"{t.name:<24} {state:<8} {', '.join(t.scopes)}")


@tokens_group.command("revoke")
@click.argument("name")
@config_errors_exit
def tokens_revoke(name: str) -> None:
    try:
        _identities(settings_for_cli()).revoke_token(name)
    except IdentityError as exc:
        _fail(exc)
    click.echo(f"token {name} revoked")


@click.command("login")
@click.option("--username", prompt=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--api-url", default=None, help="The API (default FLEET_API_URL or settings).")
@config_errors_exit
def login(username: str, password_stdin: bool, api_url: str | None) -> None:
    """Sign in; later commands that decide run as you (the token is kept in a 0600 file)."""
    import httpx

    from cli import api_client

    settings = settings_for_cli()
    url = (api_url or api_client.api_url(settings)).rstrip("/")
    password = (
        sys.stdin.readline().rstrip("\n")
        if password_stdin
        else click.prompt("Password", hide_input=True)
    )
    try:
        answer = httpx.post(
            f"{url}/api/v1/auth/sessions",
            json={"username": username, "password": password},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        _fail(RuntimeError(f"the API at {url} is unreachable: {exc}"))
        return
    if answer.status_code != 201:
        _fail(RuntimeError(f"sign-in refused ({answer.status_code})"))
    body = answer.json()
    path = api_client.save_credentials(url, body["token"], body["principal_id"], body["expires_at"])
    click.echo(f"signed in as {body['principal_id']} ({body['role']}) until {body['expires_at']}")
    click.echo(f"credentials in {path}")
