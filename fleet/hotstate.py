"""Redis as hot state (not the broker): latest snapshots, locks, counters.

Key names live here so every process agrees on them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis
import redis.lock

KEY_PREFIX = "fleet:"


def heartbeat_key(queue: str) -> str:
    return f"{KEY_PREFIX}heartbeat:{queue}"


@functools.lru_cache(maxsize=8)
def connect(url: str) -> redis.Redis:
    """One pooled client per URL per process."""
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


def provisioning_frozen_key(fleet: str) -> str:
    return f"{KEY_PREFIX}provisioning-frozen:{fleet}"


def is_provisioning_frozen(r: redis.Redis, fleet: str) -> bool:
    return bool(r.exists(provisioning_frozen_key(fleet)))


def set_provisioning_frozen(r: redis.Redis, fleet: str, frozen: bool, reason: str = "") -> None:
    if frozen:
        r.set(provisioning_frozen_key(fleet), reason or "frozen")
    else:
        r.delete(provisioning_frozen_key(fleet))


class Lease:
    """A held lock; `renew()` pushes its expiry out again while work goes on."""

    def __init__(self, lock: redis.lock.Lock, ttl_s: float) -> None:
        self._lock = lock
        self._ttl_s = ttl_s
        self._renewed_at = time.monotonic()

    def renew(self) -> None:
        """Cheap to call often: talks to Redis only once half the TTL has gone."""
        now = time.monotonic()
        if now - self._renewed_at < self._ttl_s / 2:
            return
        try:
            self._lock.reacquire()
            self._renewed_at = now
        except redis.exceptions.LockNotOwnedError:
            pass  # expired meanwhile: the step records keep a second runner harmless


@contextmanager
def try_lock(r: redis.Redis, name: str, ttl_s: float) -> Iterator[Lease | None]:
    """Hold a lock if nobody else does; yields a Lease, or None when it is taken.
    It expires on its own, so a worker killed while holding it blocks the work
    for at most ttl_s."""
    lock = r.lock(f"{KEY_PREFIX}lock:{name}", timeout=ttl_s, blocking=False)
    acquired = lock.acquire()
    try:
        yield Lease(lock, ttl_s) if acquired else None
    finally:
        if acquired:
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass  # expired meanwhile; someone else may hold it now


def inflight_key(agent_id: str) -> str:
    """Work items routed to an agent and not yet finished (routing keeps it)."""
    return f"{KEY_PREFIX}inflight:{agent_id}"


def inflight(r: redis.Redis, agent_id: str) -> int:
    return int(r.get(inflight_key(agent_id)) or 0)
