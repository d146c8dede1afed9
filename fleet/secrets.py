"""Agents' API keys at rest: encrypted under random keys from settings, never logged.

``FLEET_SECRETS_KEY`` holds one or more Fernet keys (AES-128-CBC + HMAC-SHA256,
32 random bytes each, from ``fleet keys new-vault-key``), comma-separated,
newest first: new tokens are made under the first, any of them decrypts
(MultiFernet), and ``fleet keys rotate-vault`` re-encrypts every stored key
under the first so an older one can then be dropped. A stolen database alone
reveals no gateway key.

Migrating from the old scheme (one Fernet key derived from a passphrase by an
unsalted SHA-256): put the old passphrase after the new key,
``FLEET_SECRETS_KEY=<new Fernet key>,<old passphrase>``. An entry that is not
a Fernet key is read as such a passphrase, for decrypting only; run
``fleet keys rotate-vault`` once, then remove it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import flag_modified

from fleet.storage.records import Agent

_HOW_TO_GET_ONE = "generate one with `fleet keys new-vault-key`"


class SecretsError(Exception):
    """A stored secret cannot be decrypted (wrong FLEET_SECRETS_KEY, or tampered)."""


class VaultKeyError(SecretsError):
    """FLEET_SECRETS_KEY does not hold a usable Fernet key."""


def new_vault_key() -> str:
    return Fernet.generate_key().decode("ascii")


def _fernet_key(text: str) -> Fernet | None:
    """The Fernet of a key in Fernet's own form (url-safe base64 of 32 bytes), else None."""
    try:
        raw = base64.urlsafe_b64decode(text.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    return Fernet(text.encode("ascii")) if len(raw) == 32 else None


def legacy_fernet(passphrase: str) -> Fernet:
    """The old scheme's key: SHA-256 of a fixed prefix and the passphrase. Decrypting only."""
    derived = hashlib.sha256(b"fleet-commander/agent-keys/" + passphrase.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


class KeyVault:
    """Encrypts under the newest key of FLEET_SECRETS_KEY, decrypts under any of them.

    A setting that holds no usable key is refused on first use, with what is wrong
    (a process that never touches an agent key, such as the audit worker, runs).
    """

    def __init__(self, secrets_key: str) -> None:
        self._newest: Fernet | None = None
        self._all: MultiFernet | None = None
        self._error: VaultKeyError | None = None
        entries = [part.strip() for part in secrets_key.split(",") if part.strip()]
        if not entries:
            self._error = VaultKeyError(f"FLEET_SECRETS_KEY is empty: {_HOW_TO_GET_ONE}")
            return
        keys = [_fernet_key(e) for e in entries]
        newest = keys[0]
        if newest is None:
            self._error = VaultKeyError(
                "FLEET_SECRETS_KEY must start with a Fernet key (url-safe base64 of 32 random "
                f"bytes), not a passphrase: {_HOW_TO_GET_ONE}; an old passphrase may follow it, "
                "after a comma, until `fleet keys rotate-vault` has run"
            )
            return
        current = [f for f in keys if f is not None]
        legacy = [legacy_fernet(e) for e, f in zip(entries, keys, strict=True) if f is None]
        self._newest, self._all = newest, MultiFernet(current + legacy)

    def _keys(self) -> tuple[Fernet, MultiFernet]:
        if self._newest is None or self._all is None:
            assert self._error is not None
            raise self._error
        return self._newest, self._all

    def check(self) -> None:
        """Raise VaultKeyError now if FLEET_SECRETS_KEY is unusable."""
        self._keys()

    def encrypt(self, api_key: str) -> str:
        return self._keys()[0].encrypt(api_key.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._keys()[1].decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretsError(
                "stored agent key cannot be decrypted with the configured FLEET_SECRETS_KEY"
            ) from None

    def is_current(self, token: str) -> bool:
        """Whether the token is under the newest key already."""
        try:
            self._keys()[0].decrypt(token.encode())
        except InvalidToken:
            return False
        return True

    def rotate(self, token: str) -> str:
        """The same secret, encrypted under the newest key."""
        try:
            return self._keys()[1].rotate(token.encode()).decode()
        except InvalidToken:
            raise SecretsError(
                "stored agent key cannot be decrypted with the configured FLEET_SECRETS_KEY"
            ) from None

    def __repr__(self) -> str:
        return "KeyVault(<redacted>)"


@dataclass(frozen=True)
class VaultRotation:
    agents: int  # agents holding at least one encrypted key
    rotated: int  # tokens re-encrypted
    current: int  # tokens already under the newest key


def rotate_vault(sessions: sessionmaker[Session], vault: KeyVault) -> VaultRotation:
    """Re-encrypt every stored agent key (current and held-over ones) under the newest key.

    One transaction: a token that cannot be decrypted stops it with nothing changed.
    """
    agents = rotated = current = 0

    def fresh(token: str) -> str:
        nonlocal rotated, current
        if vault.is_current(token):
            current += 1
            return token
        rotated += 1
        return vault.rotate(token)

    with sessions() as s, s.begin():
        for agent in s.scalars(select(Agent).order_by(Agent.agent_id)):
            held: list[dict[str, Any]] = list(agent.extra.get("held_keys", []))
            if not agent.api_key_encrypted and not held:
                continue
            agents += 1
            if agent.api_key_encrypted:
                agent.api_key_encrypted = fresh(agent.api_key_encrypted)
            if any(k.get("key_encrypted") for k in held):
                agent.extra = {
                    **agent.extra,
                    "held_keys": [
                        {**k, "key_encrypted": fresh(k["key_encrypted"])}
                        if k.get("key_encrypted")
                        else k
                        for k in held
                    ],
                }
                flag_modified(agent, "extra")
    return VaultRotation(agents, rotated, current)


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
