"""Which key a call goes out with.

The gateway's ownership rules decide who may touch what (an agent's wallet
with its own key or the admin key; freezing only with the admin key), so
every operation names an :class:`Auth` and the client asks its
:class:`KeyRing` for the key that Auth stands for. Resolution also says
which agent's hourly window the call counts against: the gateway counts per
agent id across all that agent's keys, and not at all for admin-scope keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, runtime_checkable

from pydantic import SecretStr

from fleet.gateway.errors import MissingKey

AuthKind = Literal["none", "admin", "any", "own", "operator"]
KeyArg = str | SecretStr


def _secret(key: KeyArg) -> str:
    return key.get_secret_value() if isinstance(key, SecretStr) else key


@runtime_checkable
class KeyRing(Protocol):
    def admin_key(self) -> str | None: ...

    def agent_key(self, agent_id: str) -> str | None: ...


@runtime_checkable
class BrowsableKeyRing(KeyRing, Protocol):
    """A ring that can name one agent it holds a key for (for :attr:`Auth.ANY` without admin)."""

    def any_agent(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Auth:
    kind: AuthKind
    agent_id: str | None = None

    NONE: ClassVar[Auth]
    ADMIN: ClassVar[Auth]
    ANY: ClassVar[Auth]

    def __post_init__(self) -> None:
        if (self.kind in ("own", "operator")) != (self.agent_id is not None):
            raise ValueError(
                f"Auth {self.kind!r} {'needs' if self.agent_id is None else 'takes no'} agent_id"
            )

    @staticmethod
    def own(agent_id: str) -> Auth:
        """That agent's own key."""
        return Auth("own", agent_id)

    @staticmethod
    def operator(agent_id: str) -> Auth:
        """The admin key if there is one, else that agent's own key."""
        return Auth("operator", agent_id)

    def __str__(self) -> str:
        return self.kind if self.agent_id is None else f"{self.kind}({self.agent_id})"


Auth.NONE = Auth("none")
Auth.ADMIN = Auth("admin")
Auth.ANY = Auth("any")


@dataclass(frozen=True, slots=True)
class Credential:
    """The key for one call, and the agent whose hourly window it counts against
    (None for admin-scope keys and unauthenticated calls, which the gateway does not limit)."""

    key: str | None
    window_agent: str | None


def resolve(auth: Auth, ring: KeyRing, subject: str | None = None) -> Credential:
    """The credential ``auth`` stands for, or MissingKey. ``subject`` is the agent the
    operation is about, the first candidate for :attr:`Auth.ANY` without an admin key."""
    if auth.kind == "none":
        return Credential(None, None)
    admin = ring.admin_key()
    if auth.kind == "admin":
        if not admin:
            raise MissingKey("no admin key configured", code="missing-admin-key")
        return Credential(admin, None)
    if admin and auth.kind in ("any", "operator"):
        return Credential(admin, None)
    if auth.kind == "any":
        candidates: list[str | None] = [subject]
        if isinstance(ring, BrowsableKeyRing):
            candidates.append(ring.any_agent())
        for agent in candidates:
            key = ring.agent_key(agent) if agent else None
            if key:
                return Credential(key, agent)
        raise MissingKey("no admin key and no agent key in the key ring", code="missing-key")
    assert auth.agent_id is not None
    key = ring.agent_key(auth.agent_id)
    if not key:
        raise MissingKey(f"no key for agent {auth.agent_id!r} in the key ring", code="missing-key")
    return Credential(key, auth.agent_id)


class StaticKeyRing:
    """An admin key and a fixed map of agent keys (tests, scripts, a single-operator setup)."""

    def __init__(
        self, admin: KeyArg | None = None, agents: Mapping[str, KeyArg] | None = None
    ) -> None:
        self._admin = _secret(admin) if admin is not None else None
        self._agents = {a: _secret(k) for a, k in (agents or {}).items()}

    def admin_key(self) -> str | None:
        return self._admin

    def agent_key(self, agent_id: str) -> str | None:
        return self._agents.get(agent_id)

    def any_agent(self) -> str | None:
        return next(iter(self._agents), None)

    def add(self, agent_id: str, key: KeyArg) -> None:
        """Hold ``key`` for ``agent_id`` (after a registration or a rotation)."""
        self._agents[agent_id] = _secret(key)

    def secrets(self) -> tuple[str, ...]:
        keys = tuple(self._agents.values())
        return (self._admin, *keys) if self._admin else keys

    def __repr__(self) -> str:
        # Never the keys themselves: reprs end up in logs and tracebacks.
        return f"StaticKeyRing(admin={'***' if self._admin else None}, agents={len(self._agents)})"


__all__ = ["Auth", "BrowsableKeyRing", "Credential", "KeyRing", "StaticKeyRing", "resolve"]
