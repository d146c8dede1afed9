"""Poison messages end: deliveries are counted, and too many make a dead letter.

A task message acknowledged late is handed back when its worker dies under it.
One that kills its worker every time (or lands on a worker that keeps dying)
would come back forever. So every delivery of a late-acknowledged task counts
one up against its task id in Redis before it runs, and its end (success or
failure, anything but the process dying) clears the count. A delivery that
finds the count past ``max_deliveries`` does not run: the message is stored in
``dead_letters`` with its arguments and acknowledged. ``fleet dlq list`` shows
it, ``fleet dlq replay`` sends it again (same task id, fresh count), ``fleet
dlq drop`` settles it without running it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import redis
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from fleet.durability.models import DeadLetter
from fleet.hotstate import KEY_PREFIX
from fleet.storage.db import write_session


def deliveries_key(task_id: str) -> str:
    return f"{KEY_PREFIX}deliveries:{task_id}"


def count_delivery(r: redis.Redis, task_id: str, ttl_s: int) -> int:
    """This delivery's number (1 for the first); the count outlives a dead worker by ttl_s."""
    pipe = r.pipeline()
    pipe.incr(deliveries_key(task_id))
    pipe.expire(deliveries_key(task_id), ttl_s)
    count, _ = pipe.execute()
    return int(count)


def clear_deliveries(r: redis.Redis, task_id: str) -> None:
    """The task ended (however): its next delivery, a retry or a replay, counts from one."""
    r.delete(deliveries_key(task_id))


@dataclass(frozen=True)
class Message:
    task_id: str
    task_name: str
    queue: str | None
    args: list[Any]
    kwargs: dict[str, Any]


def bury(sessions: sessionmaker[Session], message: Message, deliveries: int, now: datetime) -> str:
    """Store a message that will not run again by itself; returns the letter's id.

    A task id already buried and not settled is not buried twice (a delivery of the
    same message that raced the first burial)."""
    with write_session(sessions) as s:
        existing = s.scalar(
            select(DeadLetter.letter_id).where(
                DeadLetter.task_id == message.task_id, DeadLetter.settled.is_(None)
            )
        )
        if existing is not None:
            return existing
        letter_id = uuid.uuid4().hex
        s.add(
            DeadLetter(
                letter_id=letter_id,
                task_id=message.task_id,
                task_name=message.task_name,
                queue=message.queue,
                args=list(message.args),
                kwargs=dict(message.kwargs),
                deliveries=deliveries,
                reason=(
                    f"delivered {deliveries} times without finishing (its worker died under it "
                    "each time)"
                ),
                dead_at=now,
            )
        )
        return letter_id


def open_letters(sessions: sessionmaker[Session], limit: int = 100) -> list[DeadLetter]:
    with sessions() as s:
        rows = s.scalars(
            select(DeadLetter)
            .where(DeadLetter.settled.is_(None))
            .order_by(DeadLetter.dead_at)
            .limit(limit)
        )
        return list(rows)


def open_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).where(DeadLetter.settled.is_(None))) or 0)


class LetterNotFound(LookupError):
    pass


def settle(
    sessions: sessionmaker[Session],
    letter_id: str,
    how: Literal["replayed", "dropped"],
    by: str,
    now: datetime,
) -> DeadLetter:
    """Mark an open letter replayed or dropped, once; returns it (to send, when replayed).

    Raises LetterNotFound for an unknown id or one settled already, so two operators
    replaying the same letter send it once."""
    with write_session(sessions) as s:
        done = s.execute(
            update(DeadLetter)
            .where(DeadLetter.letter_id == letter_id, DeadLetter.settled.is_(None))
            .values(settled=how, settled_at=now, settled_by=by)
        )
        if not done.rowcount:  # type: ignore[attr-defined]
            raise LetterNotFound(f"no open dead letter {letter_id!r} (`fleet dlq list`)")
        letter = s.get(DeadLetter, letter_id)
        assert letter is not None
        s.expunge(letter)
        return letter
