"""`fleet up --demo`: random credentials on first start, kept in the data directory.

The demo never runs on a secret printed in the README: the first start
generates an API token, a Flower password and the password of an ``admin``
account, writes them to ``<data dir>/demo-credentials.json`` (mode 0600), and
every later start reuses them, so a newcomer signs in with what was printed.
Variables set by the operator (FLEET_API__TOKEN, FLEET_FLOWER__PASSWORD) win.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

FILE_NAME = "demo-credentials.json"
ADMIN_USER = "admin"


@dataclass(frozen=True)
class DemoCredentials:
    api_token: str
    flower_password: str
    admin_user: str
    admin_password: str


def _generate() -> DemoCredentials:
    return DemoCredentials(
        api_token=secrets.token_urlsafe(32),
        flower_password=secrets.token_urlsafe(18),
        admin_user=ADMIN_USER,
        admin_password=secrets.token_urlsafe(18),
    )


def load_or_create(data_dir: Path) -> DemoCredentials:
    path = data_dir / FILE_NAME
    try:
        stored = json.loads(path.read_text())
        return DemoCredentials(**stored)
    except (OSError, ValueError, TypeError):
        pass
    creds = _generate()
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(creds), out, indent=2)
    return creds


def apply_to_environment(creds: DemoCredentials, environ: dict[str, str] | None = None) -> None:
    """Use them unless the operator set their own."""
    env = os.environ if environ is None else environ
    env.setdefault("FLEET_API__TOKEN", creds.api_token)
    env.setdefault("FLEET_FLOWER__PASSWORD", creds.flower_password)


def ensure_admin(creds: DemoCredentials, identities: object) -> bool:
    """Create the admin account once; True if it was created now."""
    from fleet.identity import Identities, Role

    assert isinstance(identities, Identities)
    if any(u.username == creds.admin_user for u in identities.list_users()):
        return False
    identities.add_user(creds.admin_user, Role.ADMIN, creds.admin_password)
    return True
