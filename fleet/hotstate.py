"""Redis as hot state (not the broker): latest snapshots, locks, counters.

Key names live here so every process agrees on them.
"""

from __future__ import annotations

import functools
import os
import socket
import time
import uuid
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


def _holder_token() -> str:
    # Who holds a lock: a restarted worker on this host can tell a dead holder's lock
    # from a live one's (break_dead_lock) instead of waiting out its TTL.
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"


def lock_key(name: str) -> str:
    return f"{KEY_PREFIX}lock:{name}"


@contextmanager
def try_lock(r: redis.Redis, name: str, ttl_s: float) -> Iterator[Lease | None]:
    """Hold a lock if nobody else does; yields a Lease, or None when it is taken.
    It expires on its own, so a worker killed while holding it blocks the work
    for at most ttl_s (not at all when it died on this host)."""
    lock = r.lock(lock_key(name), timeout=ttl_s, blocking=False)
    token = _holder_token()
    acquired = lock.acquire(token=token)
    if not acquired and break_dead_lock(r, name) == 0:
        # Its holder was a process of this host that died (a pool process killed mid-task,
        # whose message came straight back): the work is ours now, not in ttl_s.
        acquired = lock.acquire(token=token)
    try:
        yield Lease(lock, ttl_s) if acquired else None
    finally:
        if acquired:
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass  # expired meanwhile; someone else may hold it now


# Deletes the lock only if it still holds the token read: never someone else's newer lock.
_DELETE_IF_HELD_BY = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


def break_dead_lock(r: redis.Redis, name: str) -> float:
    """Free a lock whose holder was a process of this host that no longer exists.

    Returns 0 when the lock is free (now or already), else the seconds it still
    holds: a live holder's, or one on another host, which only its TTL frees."""
    token = read_str(r, lock_key(name))
    if token is None:
        return 0.0
    host, _, rest = token.partition(":")
    pid_text = rest.partition(":")[0]
    if host == socket.gethostname() and pid_text.isdigit() and not _process_exists(int(pid_text)):
        if r.eval(_DELETE_IF_HELD_BY, 1, lock_key(name), token):
            return 0.0
    remaining_ms = int(r.pttl(lock_key(name)))
    return max(0.0, remaining_ms / 1000)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def inflight_key(agent_id: str) -> str:
    """Work items routed to an agent and not yet finished (routing keeps it)."""
    return f"{KEY_PREFIX}inflight:{agent_id}"


def inflight(r: redis.Redis, agent_id: str) -> int:
    return int(r.get(inflight_key(agent_id)) or 0)
