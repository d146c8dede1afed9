"""Per-process wiring: the domain's dependencies, built once from settings.

Tasks are thin: they fetch what they need here and call a domain function.
Everything is created lazily in the worker process (after fork), never at import.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager

import redis
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings, get_settings
from fleet.clock import SystemClock
from fleet.gateway.loop import LoopGatewayClient
from fleet.hotstate import Lease, connect, is_provisioning_frozen, try_lock
from fleet.provisioning.pipeline import ProvisioningDeps
from fleet.secrets import KeyVault
from fleet.storage.db import engine_for, session_factory


def settings() -> Settings:
    return get_settings()


@functools.cache
def sessions() -> sessionmaker[Session]:
    return session_factory(engine_for(settings().sqlalchemy_url))


def hot() -> redis.Redis:
    return connect(settings().redis_url)


@functools.cache
def gateway() -> LoopGatewayClient:
    # One client per process, on one background event loop: its connection
    # pool and circuit breakers are shared by every thread of a threads-pool worker.
    return LoopGatewayClient.from_settings(settings())


def lock(name: str, ttl_s: float) -> AbstractContextManager[Lease | None]:
    return try_lock(hot(), name, ttl_s)


@functools.cache
def audit_sink() -> Callable[..., None]:
    """`fleet.audit.record`, with the events of concurrent threads grouped into
    shared queue messages (see fleet.audit.group)."""
    from fleet import audit
    from fleet.audit.group import GroupSink
    from tasks.audit import enqueue_or_append

    audit.use_sink(GroupSink(enqueue_or_append))
    return audit.record


@functools.cache
def provisioning() -> ProvisioningDeps:
    s = settings()
    return ProvisioningDeps(
        sessions=sessions(),
        gateway=gateway(),
        policy=s.policy,
        vault=KeyVault(s.secrets_key.get_secret_value()),
        clock=SystemClock(),
        audit=audit_sink(),
        lock=lock,
        is_frozen=lambda fleet: is_provisioning_frozen(hot(), fleet),
        lock_ttl_s=s.schedule.provisioning_lock_ttl_s,
    )


def reset() -> None:
    """Forget everything built (tests that change settings in-process)."""
    for cached in (sessions, gateway, provisioning):
        cached.cache_clear()


__all__ = ["gateway", "hot", "lock", "provisioning", "reset", "sessions", "settings"]
