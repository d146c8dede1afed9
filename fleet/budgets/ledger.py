"""The spend ledger: settlements queue their rows in Redis; this writes them in batches.

The settle script appends one JSON row per spend to a Redis list in the same atomic
step that books it, so the hot path never waits on the database. :func:`drain`
(a task on the ``routing`` queue, sent by beat) reads a batch from the head, inserts
it, and only then trims it: a drainer killed in between leaves the rows to the next
one, and the task id primary key makes the second insert of a row a no-op. One
drainer at a time (a lock), so rows land in order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import redis
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from fleet.budgets.admission import LEDGER_KEY, from_micros
from fleet.budgets.models import SpendEntry
from fleet.clock import utc_from_timestamp
from fleet.hotstate import Lease
from fleet.storage.db import write_connection

log = logging.getLogger(__name__)

LOCK_NAME = "budgets:ledger-drain"


@dataclass(frozen=True)
class LedgerDeps:
    redis: redis.Redis
    sessions: sessionmaker[Session]
    lock: Callable[[str, float], AbstractContextManager[Lease | None]]
    batch_size: int = 1000


def _row(raw: str) -> dict[str, Any]:
    d = json.loads(raw)
    usage = d.get("usage") or "{}"
    return {
        "task_id": d["task_id"],
        "agent_id": d["agent_id"],
        "fleet": d["fleet"],
        "model": d["model"],
        "pool": d.get("pool") or None,
        "estimate": format(from_micros(d["estimate"]), "f"),
        "actual": format(from_micros(d["actual"]), "f"),
        "charged": d.get("charged") or None,
        "currency": d["currency"],
        "usage": json.loads(usage) if isinstance(usage, str) else usage,
        "trace_id": d.get("trace_id") or None,
        "reserved_at": utc_from_timestamp(float(d["reserved_at"])),
        "settled_at": utc_from_timestamp(float(d["settled_at"])),
    }


def _insert(sessions: sessionmaker[Session], rows: Sequence[dict[str, Any]]) -> None:
    engine = sessions.kw["bind"]
    dialect = engine.dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(SpendEntry).on_conflict_do_nothing(index_elements=["task_id"])
    elif dialect == "sqlite":
        stmt = sqlite.insert(SpendEntry).on_conflict_do_nothing(index_elements=["task_id"])
    else:  # pragma: no cover - the two databases we run on
        raise RuntimeError(f"the ledger does not know how to insert on {dialect}")
    with write_connection(sessions) as conn:
        conn.execute(stmt, list(rows))


def drain(deps: LedgerDeps, max_batches: int = 100) -> int:
    """Move queued ledger rows into the database; returns how many were written."""
    written = 0
    with deps.lock(LOCK_NAME, 60.0) as lease:
        if lease is None:
            return 0  # another drainer is at it
        for _ in range(max_batches):
            raw = cast("list[str]", deps.redis.lrange(LEDGER_KEY, 0, deps.batch_size - 1))
            if not raw:
                break
            rows = []
            for item in raw:
                try:
                    rows.append(_row(item))
                except (KeyError, ValueError, TypeError) as exc:
                    log.error("ledger row dropped, unreadable (%s): %.200s", exc, item)
            if rows:
                _insert(deps.sessions, rows)
            deps.redis.ltrim(LEDGER_KEY, len(raw), -1)
            written += len(rows)
            lease.renew()
            if len(raw) < deps.batch_size:
                break
    return written


def pending(r: redis.Redis) -> int:
    return int(r.llen(LEDGER_KEY))


def totals(
    sessions: sessionmaker[Session], *, fleet: str | None = None, since: datetime | None = None
) -> dict[str, Any]:
    """Rows and the sums of estimate and actual in the ledger (read side, not the hot path)."""
    stmt = select(SpendEntry.estimate, SpendEntry.actual)
    if fleet is not None:
        stmt = stmt.where(SpendEntry.fleet == fleet)
    if since is not None:
        stmt = stmt.where(SpendEntry.settled_at >= since)
    count = 0
    estimate = actual = Decimal(0)
    with sessions() as s:
        for e, a in s.execute(stmt):
            count += 1
            estimate += Decimal(e)
            actual += Decimal(a)
    return {"entries": count, "estimate": format(estimate, "f"), "actual": format(actual, "f")}


def entry_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(SpendEntry)) or 0)
