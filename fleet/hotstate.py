"""Redis as hot state (not the broker): latest snapshots, locks, counters.

Key names live here so every process agrees on them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import cast

import redis
import redis.lock
from redis.typing import EncodableT, FieldT

KEY_PREFIX = "fleet:"


def heartbeat_key(queue: str) -> str:
    return f"{KEY_PREFIX}heartbeat:{queue}"


@functools.lru_cache(maxsize=8)
def connect(url: str) -> redis.Redis:
    """One pooled client per URL per process."""
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


# redis-py types replies as bytes | str because a client may or may not decode them. Every
# client here decodes (connect() above; the tests' fakeredis likewise), so replies are str:
# these helpers say so in one place instead of at each call. They work on a pipeline too,
# for writes (a pipeline's reads arrive later, from execute()).


def read_hash(r: redis.Redis, key: str) -> dict[str, str]:
    """The whole hash at ``key``; empty when there is none."""
    return cast("dict[str, str]", r.hgetall(key))


def read_fields(r: redis.Redis, key: str, *fields: str) -> list[str | None]:
    """The named fields of the hash at ``key``, None for each one missing."""
    return cast("list[str | None]", r.hmget(key, list(fields)))


def read_str(r: redis.Redis, key: str) -> str | None:
    """The string at ``key``, None when there is none."""
    return cast("str | None", r.get(key))


def write_hash(r: redis.Redis, key: str, fields: Mapping[str, str]) -> None:
    """Set ``fields`` in the hash at ``key``, leaving its other fields alone."""
    # Mapping is invariant in its key type, so Mapping[str, str] is not a Mapping[FieldT, ...]
    # to mypy, though redis-py only reads it.
    r.hset(key, mapping=cast("Mapping[FieldT, EncodableT]", fields))


def texts(values: Iterable[bytes | str]) -> list[str]:
    """A set's members or a list's items, as the str they are on a decoding client."""
    return cast("list[str]", list(values))


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
