"""Queue heartbeats: a canary message per queue proves a live consumer.

Beat sends ``<queue>.heartbeat`` on every queue; the worker that runs it
records when and where. `fleet status` reads the records: a queue whose last
heartbeat is older than a few intervals has no live worker, or is backed up.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from fleet.hotstate import heartbeat_key, read_hash, write_hash


@dataclass(frozen=True, slots=True)
class Heartbeat:
    queue: str
    worker: str
    ran_at: float
    lag_s: float | None


def record_heartbeat(
    r: redis.Redis, queue: str, worker: str, ran_at: float, sent_at: float | None
) -> Heartbeat:
    lag = None if sent_at is None else max(0.0, ran_at - sent_at)
    fields = {"worker": worker, "ran_at": repr(ran_at), "lag_s": "" if lag is None else repr(lag)}
    write_hash(r, heartbeat_key(queue), fields)
    return Heartbeat(queue, worker, ran_at, lag)


def read_heartbeat(r: redis.Redis, queue: str) -> Heartbeat | None:
    raw = read_hash(r, heartbeat_key(queue))
    if not raw:
        return None
    lag = raw.get("lag_s") or None
    return Heartbeat(
        queue, raw.get("worker", "?"), float(raw["ran_at"]), None if lag is None else float(lag)
    )
