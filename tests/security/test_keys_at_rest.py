"""Agents' gateway keys at rest: under random Fernet keys, not a passphrase hash.

On main every agent key was encrypted under SHA-256("fleet-commander/agent-keys/" +
FLEET_SECRETS_KEY), whose default is ``change-me-in-production``: anyone with the
database and the source could decrypt them all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import InvalidToken
from sqlalchemy import select

from fleet.secrets import (
    KeyVault,
    SecretsError,
    VaultKeyError,
    legacy_fernet,
    new_vault_key,
    rotate_vault,
)
from fleet.storage.db import create_db_engine, migrate, session_factory, write_session
from fleet.storage.records import Agent

OLD_DEFAULT = "change-me-in-production"


def agent_row(agent_id: str, **fields: Any) -> Agent:
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "agent_id": agent_id,
        "fleet": "vault-test",
        "environment": "test",
        "id_prefix": "vault",
        "tier": "free",
        "sla_template": "standard-support",
        "status": "active",
        "extra": {},
        "created_at": now,
        "updated_at": now,
    }
    return Agent(**(row | fields))


def test_a_stored_key_does_not_decrypt_with_the_old_default_passphrase() -> None:
    token = KeyVault(new_vault_key()).encrypt("gw-secret-key")
    with pytest.raises(InvalidToken):
        legacy_fernet(OLD_DEFAULT).decrypt(token.encode())
    with pytest.raises(SecretsError):
        KeyVault(f"{new_vault_key()},{OLD_DEFAULT}").decrypt(token)


def test_a_passphrase_is_refused_as_the_vault_key() -> None:
    for setting in (OLD_DEFAULT, "", f"{OLD_DEFAULT},{new_vault_key()}"):
        vault = KeyVault(setting)
        with pytest.raises(VaultKeyError, match="FLEET_SECRETS_KEY"):
            vault.encrypt("gw-secret-key")


def test_rotation_moves_old_scheme_and_older_keys_to_the_newest(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    older = new_vault_key()
    legacy_token = legacy_fernet(OLD_DEFAULT).encrypt(b"key-a").decode()
    older_token = KeyVault(older).encrypt("key-b")
    held_token = KeyVault(older).encrypt("key-b-previous")
    with write_session(sessions) as s:
        s.add(agent_row("agent-a", api_key_encrypted=legacy_token))
        s.add(
            agent_row(
                "agent-b",
                api_key_encrypted=older_token,
                extra={"held_keys": [{"key_encrypted": held_token, "tier": "free"}]},
            )
        )
    newest = new_vault_key()
    migrating = KeyVault(f"{newest},{older},{OLD_DEFAULT}")
    done = rotate_vault(sessions, migrating)
    assert (done.agents, done.rotated, done.current) == (2, 3, 0)
    assert rotate_vault(sessions, migrating).rotated == 0, "a second run has nothing to do"

    only_newest = KeyVault(newest)
    with sessions() as s:
        rows = {a.agent_id: a for a in s.scalars(select(Agent))}
    assert only_newest.decrypt(rows["agent-a"].api_key_encrypted or "") == "key-a"
    assert only_newest.decrypt(rows["agent-b"].api_key_encrypted or "") == "key-b"
    held = rows["agent-b"].extra["held_keys"][0]["key_encrypted"]
    assert only_newest.decrypt(held) == "key-b-previous"
    with pytest.raises(InvalidToken):
        legacy_fernet(OLD_DEFAULT).decrypt((rows["agent-a"].api_key_encrypted or "").encode())
    engine.dispose()
