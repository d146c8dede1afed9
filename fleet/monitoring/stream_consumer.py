"""The one consumer of the gateway's event stream: heartbeats onto the `metrics` queue.

::

    GET /v1/events/stream?event_type=fleet.agent.heartbeat   (fleet.gateway.stream)
        │  Last-Event-ID = the cursor: the last event id handed on
        ▼
    batches of up to ``stream.batch_size`` events, or what came within ``batch_wait_s``
        │  one `metrics.ingest_heartbeats` message each; then the cursor moves
        ▼
    workers verify and apply (fleet.monitoring.ingest), each event once

One consumer per deployment: it holds a Redis lock, renewed while it runs; a
second replica stands by and takes over within ``lock_ttl_s`` of the first
one's death, from the cursor. The cursor moves only after its batch is on the
queue, so a consumer killed at any point loses nothing; what it handed on but
had not committed is handed on again, and the ingest applies it once. The
cursor is in Redis after every batch, and in the database at most
``cursor_db_every_s`` later: it survives a Redis flush, at worst a few seconds
early, which again only doubles messages, never applies events twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import StreamSettings
from fleet.clock import utc_from_timestamp
from fleet.gateway.stream import EventStream, StreamStats
from fleet.hotstate import KEY_PREFIX, read_hash
from fleet.monitoring.heartbeats import EVENT_TYPE
from fleet.monitoring.models import StreamCursor
from fleet.storage.db import write_session

log = logging.getLogger(__name__)

STREAM = "gateway"  # the one stream there is; the cursor table is keyed by it
LOCK_KEY = f"{KEY_PREFIX}stream:lock:{STREAM}"
CURSOR_KEY = f"{KEY_PREFIX}stream:cursor:{STREAM}"
STATS_KEY = f"{KEY_PREFIX}stream:stats:{STREAM}"

Message = tuple[str, dict[str, Any]]

# Renew or release the lock only while it is still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Move the cursor forward, only for the lock's holder (a consumer that lost the
# lock while sending can never move the new holder's cursor), and renew the lock.
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) > current then redis.call('SET', KEYS[2], ARGV[2]) end
return 1
"""


class LockLost(RuntimeError):
    pass


@dataclass
class ConsumerDeps:
    redis: redis.Redis
    sessions: sessionmaker[Session]
    send: Callable[[Sequence[Message]], None]
    settings: StreamSettings
    gateway_url: str
    api_key: str
    task_name: str


class StreamConsumer:
    """Runs until ``stop`` is set; stands by while another replica holds the lock."""

    def __init__(self, deps: ConsumerDeps, instance: str | None = None) -> None:
        self.deps = deps
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        r = deps.redis
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)
        self._commit = r.register_script(_COMMIT)
        self._db_committed_at = 0.0
        self._db_cursor = 0
        self.handed_on = 0

    # ------------------------------------------------------------------ the lock

    def try_acquire(self) -> bool:
        ttl_ms = int(self.deps.settings.lock_ttl_s * 1000)
        return bool(self.deps.redis.set(LOCK_KEY, self.instance, nx=True, px=ttl_ms))

    def renew(self) -> None:
        ttl_ms = int(self.deps.settings.lock_ttl_s * 1000)
        if not self._renew(keys=[LOCK_KEY], args=[self.instance, ttl_ms]):
            raise LockLost(f"{self.instance} no longer holds {LOCK_KEY}")

    def release(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self._release(keys=[LOCK_KEY], args=[self.instance])

    # ------------------------------------------------------------------ the cursor

    def cursor(self) -> int:
        """Where to resume: the later of Redis's and the database's cursor."""
        raw = self.deps.redis.get(CURSOR_KEY)
        in_redis = int(raw) if raw else 0
        with self.deps.sessions() as s:
            row = s.scalar(select(StreamCursor.last_event_id).where(StreamCursor.stream == STREAM))
        self._db_cursor = int(row or 0)
        return max(in_redis, self._db_cursor)

    def commit(self, event_id: int, *, force_db: bool = False) -> None:
        ttl_ms = int(self.deps.settings.lock_ttl_s * 1000)
        if self._commit(keys=[LOCK_KEY, CURSOR_KEY], args=[self.instance, event_id, ttl_ms]) == -1:
            raise LockLost(f"{self.instance} lost {LOCK_KEY} before committing {event_id}")
        now = time.monotonic()
        due = now - self._db_committed_at >= self.deps.settings.cursor_db_every_s
        if (due or force_db) and event_id > self._db_cursor:
            with write_session(self.deps.sessions) as s:
                row = s.get(StreamCursor, STREAM)
                at = utc_from_timestamp(time.time())
                if row is None:
                    s.add(StreamCursor(stream=STREAM, last_event_id=event_id, updated_at=at))
                elif event_id > row.last_event_id:
                    row.last_event_id, row.updated_at = event_id, at
            self._db_cursor, self._db_committed_at = event_id, now

    # ------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        """Consume while holding the lock; stand by, retrying it, while someone else does."""
        standby_s = max(0.2, self.deps.settings.lock_ttl_s / 3)
        announced = False
        while not stop.is_set():
            if not self.try_acquire():
                if not announced:
                    log.info(
                        "stream consumer %s standing by: %s holds the lock",
                        self.instance,
                        self.deps.redis.get(LOCK_KEY),
                    )
                    announced = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), standby_s)
                continue
            announced = False
            log.info("stream consumer %s holds the lock", self.instance)
            try:
                await self._consume(stop)
            except LockLost as exc:
                log.warning("%s; standing by", exc)
            finally:
                self.release()

    async def _consume(self, stop: asyncio.Event) -> None:
        s = self.deps.settings
        start = self.cursor()
        log.info("stream consumer %s resumes after event %d", self.instance, start)
        self.deps.redis.hset(STATS_KEY, mapping={"resumed_at": time.time(), "resumed_from": start})
        stream = EventStream(
            self.deps.gateway_url,
            self.deps.api_key,
            last_event_id=start,
            event_type=EVENT_TYPE,
            read_timeout_s=s.read_timeout_s,
            backoff_initial_s=s.reconnect_initial_s,
            backoff_max_s=s.reconnect_max_s,
        )
        # The reader fills the buffer, the batcher below empties it: per event only an
        # append (a task or a queue hand-off per event cost more than the event itself).
        buffer: list[dict[str, Any]] = []
        arrived, full, room = asyncio.Event(), asyncio.Event(), asyncio.Event()
        room.set()
        high_water = 4 * s.batch_size

        async def read() -> None:
            async for event in stream:
                buffer.append(event.raw)
                arrived.set()
                if len(buffer) >= s.batch_size:
                    full.set()
                    if len(buffer) >= high_water:
                        room.clear()
                        await room.wait()

        reader = asyncio.create_task(read())
        stopping = asyncio.create_task(stop.wait())
        renew_every = s.lock_ttl_s / 3
        renewed = time.monotonic()
        last = start
        try:
            while not stop.is_set():
                if not buffer:
                    await _first(arrived.wait(), reader, stopping, timeout_s=renew_every)
                if buffer and len(buffer) < s.batch_size:
                    await _first(full.wait(), reader, stopping, timeout_s=s.batch_wait_s)
                batch, buffer[:] = buffer[: s.batch_size], buffer[s.batch_size :]
                arrived.clear() if not buffer else arrived.set()
                full.clear() if len(buffer) < s.batch_size else full.set()
                room.set()
                if time.monotonic() - renewed >= renew_every:
                    self.renew()
                    self._record(stream.stats)
                    renewed = time.monotonic()
                if batch:
                    await self._hand_on(batch, stream.stats)
                    last = int(batch[-1]["id"])
                    renewed = time.monotonic()  # the commit renewed the lock
                if reader.done() and not buffer:
                    reader.result()  # StreamRefused and the like end the consumer loudly
        finally:
            reader.cancel()
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if last > start:
                with contextlib.suppress(LockLost, redis.RedisError):
                    self.commit(last, force_db=True)

    async def _hand_on(self, batch: list[dict[str, Any]], stats: StreamStats) -> None:
        """Onto the queue, retried until it is there, then the cursor moves."""
        message = (self.deps.task_name, {"events": batch})
        delay = self.deps.settings.reconnect_initial_s
        while True:
            try:
                self.deps.send([message])
                break
            except Exception as exc:  # noqa: BLE001 - whatever stops the broker, the batch waits
                log.warning(
                    "cannot hand on %d events (%s); retrying in %.1f s", len(batch), exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.deps.settings.reconnect_max_s)
                self.renew()
        last = int(batch[-1]["id"])
        self.commit(last)
        self.handed_on += len(batch)
        pipe = self.deps.redis.pipeline(transaction=False)
        pipe.hset(STATS_KEY, mapping={"last_event_id": last, "handed_on_at": time.time()})
        pipe.hincrby(STATS_KEY, "events", len(batch))
        pipe.hincrby(STATS_KEY, "batches", 1)
        pipe.execute()
        self._record(stats)

    def _record(self, stats: StreamStats) -> None:
        """The current connection's counters, for `fleet status` (the holder's only)."""
        self.deps.redis.hset(
            STATS_KEY,
            mapping={
                "holder": self.instance,
                "connects": stats.connects,
                "closes": stats.closes,
                "failures": stats.failures,
                "bad_frames": stats.bad_frames,
            },
        )


async def _first(
    waiting: Coroutine[Any, Any, Any], *tasks: asyncio.Task[Any], timeout_s: float
) -> None:
    """Until ``waiting`` is done, any of ``tasks`` is, or ``timeout_s`` has passed."""
    waiter = asyncio.ensure_future(waiting)
    try:
        await asyncio.wait({waiter, *tasks}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


def stream_status(r: redis.Redis) -> dict[str, str]:
    """The consumer's counters and who holds the lock, for `fleet status` and /metrics."""
    out = read_hash(r, STATS_KEY)
    holder = r.get(LOCK_KEY)
    out["lock_holder"] = holder.decode() if isinstance(holder, bytes) else str(holder or "")
    cursor = r.get(CURSOR_KEY)
    out["cursor"] = cursor.decode() if isinstance(cursor, bytes) else str(cursor or "0")
    return out


__all__ = ["ConsumerDeps", "LockLost", "StreamConsumer", "stream_status"]
