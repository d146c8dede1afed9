"""Work task state in Redis while a task runs, and its record in the database after.

- ``fleet:work:idem:{key}`` → the task id that claimed an idempotency key (SET NX, TTL);
- ``fleet:work:task:{task_id}`` → a hash: ``queued_at`` when the API accepted it,
  ``phase`` (claimed → dispatched → done) and,
  once done, the record as JSON (``record``), kept for ``ttl_s``;
- ``fleet:work:records`` → a list of finished records, drained into ``work_tasks`` in
  batches by ``routing.flush_records`` (beat, every 2 s): no database write on the hot path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import orjson
import redis
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fleet.hotstate import KEY_PREFIX, read_hash
from fleet.storage.db import write_connection
from fleet.work.records import WorkTask

RECORDS_KEY = f"{KEY_PREFIX}work:records"


def idem_key(key: str) -> str:
    return f"{KEY_PREFIX}work:idem:{key}"


def task_key(task_id: str) -> str:
    return f"{KEY_PREFIX}work:task:{task_id}"


def claim(r: redis.Redis, pairs: Sequence[tuple[str, str]], ttl_s: int) -> list[str]:
    """For each (idempotency key, task id): the task id holding the key (ours if we won)."""
    pipe = r.pipeline(transaction=False)
    for key, task_id in pairs:
        pipe.set(idem_key(key), task_id, nx=True, ex=ttl_s)
        pipe.get(idem_key(key))
        pipe.hsetnx(task_key(task_id), "phase", "claimed")
        pipe.expire(task_key(task_id), ttl_s)
    answers = pipe.execute()
    return [str(answers[i * 4 + 1]) for i in range(len(pairs))]


def mark_queued(r: redis.Redis, task_id: str, ttl_s: int) -> None:
    """Accepted and on its way to the queue: readable as ``queued`` until a worker claims it."""
    with r.pipeline() as pipe:
        pipe.hsetnx(task_key(task_id), "queued_at", f"{time.time():.3f}")
        pipe.expire(task_key(task_id), ttl_s)
        pipe.execute()


def phases(r: redis.Redis, task_ids: Sequence[str]) -> list[str | None]:
    pipe = r.pipeline(transaction=False)
    for t in task_ids:
        pipe.hget(task_key(t), "phase")
    return cast("list[str | None]", pipe.execute())


def mark_dispatched(pipe: Any, task_id: str) -> None:
    pipe.hset(task_key(task_id), "phase", "dispatched")


def finish(pipe: Any, record: dict[str, Any], ttl_s: int) -> None:
    blob = orjson.dumps(record)
    key = task_key(record["task_id"])
    pipe.hset(key, mapping={"phase": "done", "record": blob})
    pipe.expire(key, ttl_s)
    pipe.rpush(RECORDS_KEY, blob)


def task_state(r: redis.Redis, sessions: sessionmaker[Session], task_id: str) -> dict[str, Any]:
    """What is known of a task: its record, or its phase while it runs; {} when unknown."""
    raw = read_hash(r, task_key(task_id))
    if raw.get("record"):
        out: dict[str, Any] = orjson.loads(raw["record"])
        return out
    if raw.get("phase"):
        return {"task_id": task_id, "state": raw["phase"]}
    if raw.get("queued_at"):
        return {"task_id": task_id, "state": "queued"}
    with sessions() as s:
        row = s.scalars(select(WorkTask).where(WorkTask.task_id == task_id)).first()
        if row is None:
            return {}
        return {c.name: _plain(getattr(row, c.name)) for c in WorkTask.__table__.columns}


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _row(record: dict[str, Any]) -> dict[str, Any]:
    row = {c.name: record.get(c.name) for c in WorkTask.__table__.columns}
    for name in ("created_at", "finished_at"):
        row[name] = datetime.fromtimestamp(float(record[name]), UTC)
    row["capabilities"] = row["capabilities"] or []
    row["attempts"] = row["attempts"] or []
    return row


def flush_records(r: redis.Redis, sessions: sessionmaker[Session], batch: int) -> int:
    """Move finished records from Redis into ``work_tasks``; a redelivered record is skipped."""
    written = 0
    while True:
        blobs = cast("list[bytes | str] | None", r.lpop(RECORDS_KEY, batch))
        if not blobs:
            return written
        rows = [_row(orjson.loads(b)) for b in blobs]
        try:
            with write_connection(sessions) as conn:
                conn.execute(insert(WorkTask), rows)
        except IntegrityError:
            # Some were written before (a flush interrupted after its commit): one at a time.
            for row in rows:
                try:
                    with write_connection(sessions) as conn:
                        conn.execute(insert(WorkTask), [row])
                except IntegrityError:
                    continue
        except Exception:
            r.lpush(RECORDS_KEY, *reversed(blobs))  # back at the head, in their order
            raise
        written += len(rows)
        if len(blobs) < batch:
            return written
