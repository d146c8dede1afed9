"""Agents' API keys at rest: encrypted with a key from settings, never logged.

Fernet (AES-128-CBC + HMAC-SHA256 from `cryptography`) with its key derived
from FLEET_SECRETS_KEY, so a stolen database alone reveals no gateway key.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet.storage.records import Agent


class SecretsError(Exception):
    """A stored secret cannot be decrypted (wrong FLEET_SECRETS_KEY, or tampered)."""


class KeyVault:
    def __init__(self, secrets_key: str) -> None:
        derived = hashlib.sha256(b"fleet-commander/agent-keys/" + secrets_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def encrypt(self, api_key: str) -> str:
        return self._fernet.encrypt(api_key.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretsError(
                "stored agent key cannot be decrypted with the configured FLEET_SECRETS_KEY"
            ) from None

    def __repr__(self) -> str:
        return "KeyVault(<redacted>)"


class AgentKeyRing:
    """The gateway client's key ring: the admin key from settings, each agent's own
    key decrypted from its row when a call needs it.

    :meth:`trying` lends a key that is not stored yet to the calls made inside
    it (in this thread or task only), so a key handed to us by an operator is
    proved by a gateway read before it replaces the one we hold.
    """

    def __init__(self, sessions: sessionmaker[Session], vault: KeyVault, admin: str | None) -> None:
        self._sessions, self._vault, self._admin = sessions, vault, admin or None

    def admin_key(self) -> str | None:
        return self._admin

    def agent_key(self, agent_id: str) -> str | None:
        trial = _TRIAL.get()
        if trial is not None and trial[0] == agent_id:
            return trial[1]
        with self._sessions() as s:
            token = s.scalar(select(Agent.api_key_encrypted).where(Agent.agent_id == agent_id))
        return self._vault.decrypt(token) if token else None

    def agent_keys(self, agent_ids: Sequence[str]) -> dict[str, str]:
        """Many agents' keys in one read (the wallet poll's batches); agents without one
        are left out."""
        out: dict[str, str] = {}
        with self._sessions() as s:
            for start in range(0, len(agent_ids), 500):
                rows = s.execute(
                    select(Agent.agent_id, Agent.api_key_encrypted).where(
                        Agent.agent_id.in_(agent_ids[start : start + 500]),
                        Agent.api_key_encrypted.is_not(None),
                    )
                )
                out.update((agent_id, token) for agent_id, token in rows if token)
        return {agent_id: self._vault.decrypt(token) for agent_id, token in out.items()}

    @contextmanager
    def trying(self, agent_id: str, api_key: str) -> Iterator[None]:
        token = _TRIAL.set((agent_id, api_key))
        try:
            yield
        finally:
            _TRIAL.reset(token)

    def __repr__(self) -> str:
        return f"AgentKeyRing(admin={'***' if self._admin else None})"


_TRIAL: ContextVar[tuple[str, str] | None] = ContextVar("fleet_trial_key", default=None)
