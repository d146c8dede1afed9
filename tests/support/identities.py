"""Accounts for API tests: a user of a role, signed in, as request headers."""

from __future__ import annotations

from typing import Any

from fleet.identity import Identities, Role

PASSWORD = "correct horse battery staple"


def signed_in(identities: Identities, username: str, role: Role = Role.APPROVER) -> dict[str, str]:
    """Headers that call the API as ``username`` (created with ``role`` if new)."""
    if username not in {u.username for u in identities.list_users()}:
        identities.add_user(username, role, PASSWORD)
    token = identities.sign_in(username, PASSWORD).token
    return {"Authorization": f"Bearer {token}"}


def bearer(token: str) -> dict[str, Any]:
    return {"Authorization": f"Bearer {token}"}
