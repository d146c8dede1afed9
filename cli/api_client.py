"""Commands that decide go through the API, as the person running them.

Who that is: ``FLEET_API_TOKEN`` if set, else the credentials file written by
``fleet login`` (``FLEET_CREDENTIALS_FILE``, default
``~/.config/fleet-commander/credentials.json``, mode 0600). Where the API is:
``FLEET_API_URL``, else the file's, else ``http://FLEET_API__HOST:FLEET_API__PORT``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import httpx

from config.settings import Settings


def credentials_file() -> Path:
    configured = os.environ.get("FLEET_CREDENTIALS_FILE")
    if configured:
        return Path(configured)
    return Path.home() / ".config" / "fleet-commander" / "credentials.json"


def _stored() -> dict[str, Any]:
    path = credentials_file()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def api_url(settings: Settings) -> str:
    return (
        os.environ.get("FLEET_API_URL")
        or _stored().get("api_url")
        or f"http://{settings.api.host}:{settings.api.port}"
    ).rstrip("/")


def save_credentials(url: str, token: str, principal_id: str, expires_at: str) -> Path:
    path = credentials_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created 0600 before anything is written: the token is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(
            {
                "api_url": url,
                "token": token,
                "principal_id": principal_id,
                "expires_at": expires_at,
            },
            out,
        )
    return path


def _token() -> str:
    token = os.environ.get("FLEET_API_TOKEN") or _stored().get("token")
    if not token:
        click.echo(
            "fleet: not signed in: run `fleet login` or set FLEET_API_TOKEN "
            "(decisions are made as you, through the API)",
            err=True,
        )
        sys.exit(2)
    return str(token)


def call(
    settings: Settings, method: str, path: str, *, json_body: Any = None, token: str | None = None
) -> Any:
    """The JSON answer; any error is one line on stderr and exit status 1 (2: unreachable)."""
    url = api_url(settings) + path
    headers = {"Authorization": f"Bearer {token or _token()}"}
    try:
        answer = httpx.request(method, url, json=json_body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        click.echo(f"fleet: the API at {api_url(settings)} is unreachable: {exc}", err=True)
        sys.exit(2)
    if answer.status_code >= 400:
        try:
            detail = answer.json().get("detail", answer.text)
        except ValueError:
            detail = answer.text
        click.echo(f"fleet: {answer.status_code} {detail}", err=True)
        sys.exit(1)
    return answer.json() if answer.content else None
