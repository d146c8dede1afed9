"""Agents' Ed25519 identity keys: made by provisioning, held encrypted, exported for the agent.

Every agent signs its heartbeats with its identity key, and the commander
believes a heartbeat only if it verifies with the public key on record
(``Agent.extra["public_key"]``, the one the gateway holds too). The gateway's
``/v1/register`` makes an identity whose private key nobody is given, so
provisioning makes its own key pair and sets its public key as the agent's
identity key (``POST /v1/identity/agents {agent_id, public_key}``: the real
gateway replaces a registration's key for the agent itself or the admin, and
leaves the same key alone). Registering first means a 409 (an id someone else
owns) stops us before we touch that identity.

The private key is made and stored (encrypted with the agents' key vault, in
``Agent.extra["identity_key_encrypted"]``) before the gateway is told its public
half, so a retried step sets the same key, never a second one. It leaves the
commander only through :func:`export_identity_key`, for the agent's deployment,
and each export is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.monitoring.heartbeats import (
    load_private_key,
    new_identity_key,
    private_key_hex,
    public_key_hex,
)
from fleet.secrets import KeyVault
from fleet.storage.records import Agent

ENCRYPTED = "identity_key_encrypted"


class NoIdentityKey(LookupError):
    """We hold no identity key for that agent."""


@dataclass(frozen=True, slots=True)
class IdentityKey:
    private: Ed25519PrivateKey
    # The encrypted form to store; None when it was already stored.
    to_store: str | None

    @property
    def public_hex(self) -> str:
        return public_key_hex(self.private)


def held_or_new(agent: Agent, vault: KeyVault) -> IdentityKey:
    """The agent's identity key we hold, or a new one to store before it is used."""
    token = agent.extra.get(ENCRYPTED)
    if token:
        return IdentityKey(load_private_key(vault.decrypt(token)), None)
    key = new_identity_key()
    return IdentityKey(key, vault.encrypt(private_key_hex(key)))


def same_public_key(a: str | None, b: str) -> bool:
    """The gateway may write a key with an ``ed25519:`` prefix, in either case."""
    return a is not None and a.strip().lower().removeprefix("ed25519:") == b.lower()


def private_key_of(agent: Agent, vault: KeyVault) -> str:
    """The agent's identity private key (64 hex), or NoIdentityKey saying why not."""
    token = agent.extra.get(ENCRYPTED)
    if not token:
        raise NoIdentityKey(
            f"no identity key is held for {agent.agent_id}: it was provisioned before "
            "provisioning made identity keys, or has not reached its identity step"
        )
    return private_key_hex(load_private_key(vault.decrypt(token)))


def export_record(agent: Agent, by: str) -> dict[str, Any]:
    """The audit details of handing the agent's identity key out."""
    return {"public_key": agent.extra.get("public_key"), "by": by}


__all__ = [
    "ENCRYPTED",
    "IdentityKey",
    "NoIdentityKey",
    "export_record",
    "held_or_new",
    "private_key_of",
    "same_public_key",
]
