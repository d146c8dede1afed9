"""The escalation engine: which tier each open episode has reached, and sending it, once.

By how long an episode has lasted (``escalation.tiers[].after_s``) a tier comes
due; the engine sends each due tier's action to its own queue
(``escalation.tier1`` … ``escalation.tier4``) and a closed episode's recovery
stage (tier 0: resolved notice, disputes) to ``escalation.tier3``.

At most once, in order:

* The row (episode_id, tier) is the idempotency key: the engine inserts the
  rows of the due tiers with "insert, ignore on conflict" and sends only those
  it inserted itself. A second engine, or the same one a second later, finds
  them there and sends nothing.
* Tiers are sent in ascending order, and a tier is never sent before the one
  below it: within one pass they go lowest first, and a short per-episode
  lock keeps two engines from interleaving their sends on one episode.
* Sent in order is not finished in order: tier 4 never waits for tier 1 to
  finish, or a flood of tier-1 actions would delay every freeze. Each tier's
  queue runs on its own workers.

Tiers held back: none while the episode is recovering (its last sample was
compliant); ``ack_pauses_tiers`` (3 and 4) while an operator's
acknowledgement lasts. A row that was written but whose message never reached
a worker (a crash between the two) is sent again after ``redispatch_after_s``
by :func:`redispatch_stale`; a duplicate is harmless, the worker's claim sees it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import redis
from sqlalchemy import Connection, and_, delete, exists, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from config.policy import EscalationPolicy
from fleet.clock import Clock
from fleet.hotstate import KEY_PREFIX
from fleet.sla.episodes import EpisodeView, view
from fleet.sla.models import RESOLVE_TIER, ActionStatus, EpisodeState, SlaEpisode, SlaEscalation
from fleet.storage.db import write_connection

log = logging.getLogger(__name__)

# The task behind each tier; the queue follows from the name (workers/queues.py).
TIER_TASKS: dict[int, str] = {
    RESOLVE_TIER: "escalation.tier3.resolve",
    1: "escalation.tier1.remediate",
    2: "escalation.tier2.reroute",
    3: "escalation.tier3.notify",
    4: "escalation.tier4.freeze",
}
RESOLVE_ACTION = "resolve"

Message = tuple[str, dict[str, Any]]


class Sender(Protocol):
    def __call__(self, messages: Sequence[Message]) -> None: ...


@dataclass(frozen=True)
class Dispatch:
    episode_id: str
    tier: int
    task: str
    age_s: int


@dataclass
class EngineDeps:
    sessions: sessionmaker[Session]
    policy: EscalationPolicy
    clock: Clock
    send: Sender
    # Per-episode locks across engines (None: a single engine, e.g. in a unit test).
    redis: redis.Redis | None = None
    lock_ttl_s: float = 30.0


def tier_action(policy: EscalationPolicy, tier: int) -> str:
    if tier == RESOLVE_TIER:
        return RESOLVE_ACTION
    return next(t.action for t in policy.tiers if t.tier == tier)


def due_tiers(policy: EscalationPolicy, episode: EpisodeView, now: datetime) -> list[int]:
    """The tiers this episode should have reached by now, lowest first (pure)."""
    if not episode.is_open:
        return [RESOLVE_TIER]
    if episode.recovering:
        return []
    age = episode.duration_s(now)
    acked = episode.acked(now)
    due = []
    for tier in policy.tiers:
        if age < tier.after_s:
            break
        if acked and tier.tier in policy.ack_pauses_tiers:
            break  # in order: nothing above a held tier either
        due.append(tier.tier)
    return due


def evaluate(deps: EngineDeps, episode_ids: Iterable[str] | None = None) -> list[Dispatch]:
    """Send every tier that has come due for these episodes (None: every open one, and
    recently closed ones whose recovery stage was not sent). Returns what was sent."""
    now = deps.clock.now()
    episodes = _load(deps, episode_ids, now)
    if not episodes:
        return []
    sent: list[Dispatch] = []
    with _episode_locks(deps, [e.episode_id for e in episodes]) as locked:
        todo = [e for e in episodes if e.episode_id in locked]
        existing = _existing(deps.sessions, [e.episode_id for e in todo])
        planned: list[tuple[EpisodeView, int]] = []
        for episode in todo:
            have = existing.get(episode.episode_id, set())
            for tier in due_tiers(deps.policy, episode, now):
                if tier not in have:
                    planned.append((episode, tier))
        if not planned:
            return []
        rows = [_row(deps.policy, episode, tier, now) for episode, tier in planned]
        with write_connection(deps.sessions) as conn:
            inserted = _insert_ignoring_conflicts(conn, rows)
        # Lowest tier first within each episode; insertion order kept that already.
        mine = [(e, t) for e, t in planned if (e.episode_id, t) in inserted]
        messages = [(TIER_TASKS[t], {"episode_id": e.episode_id, "tier": t}) for e, t in mine]
        try:
            deps.send(messages)
        except Exception:
            # Nothing (or not everything) reached the broker: forget the rows so the
            # next pass sends them again rather than waiting for redispatch.
            _forget(deps.sessions, [(e.episode_id, t) for e, t in mine])
            raise
        sent = [Dispatch(e.episode_id, t, TIER_TASKS[t], int(e.duration_s(now))) for e, t in mine]
    for d in sent:
        log.info("episode %s: tier %d sent (%s) at %d s", d.episode_id, d.tier, d.task, d.age_s)
    return sent


def redispatch_stale(deps: EngineDeps) -> list[Dispatch]:
    """Send again the tiers written but never picked up, and those whose worker's lease ran out."""
    now = deps.clock.now()
    cutoff = now - timedelta(seconds=deps.policy.redispatch_after_s)
    with deps.sessions() as s:
        rows = s.execute(
            select(SlaEscalation.episode_id, SlaEscalation.tier)
            .where(
                or_(
                    and_(
                        SlaEscalation.status == ActionStatus.DISPATCHED,
                        SlaEscalation.dispatched_at < cutoff,
                    ),
                    and_(
                        SlaEscalation.status == ActionStatus.RUNNING,
                        SlaEscalation.lease_until < now,
                    ),
                )
            )
            .order_by(SlaEscalation.episode_id, SlaEscalation.tier)
            .limit(5000)
        ).all()
    if not rows:
        return []
    keys = [(str(e), int(t)) for e, t in rows]
    with write_connection(deps.sessions) as conn:
        for episode_id, tier in keys:
            conn.execute(
                update(SlaEscalation)
                .where(SlaEscalation.episode_id == episode_id, SlaEscalation.tier == tier)
                .values(dispatched_at=now, dispatch_count=SlaEscalation.dispatch_count + 1)
            )
    deps.send([(TIER_TASKS[t], {"episode_id": e, "tier": t}) for e, t in keys])
    log.warning("sent %d escalation actions again (lost message or dead worker)", len(keys))
    return [Dispatch(e, t, TIER_TASKS[t], 0) for e, t in keys]


# ----------------------------------------------------------------------------- plumbing


def _load(deps: EngineDeps, episode_ids: Iterable[str] | None, now: datetime) -> list[EpisodeView]:
    with deps.sessions() as s:
        if episode_ids is not None:
            ids = list(dict.fromkeys(episode_ids))
            out: list[SlaEpisode] = []
            for start in range(0, len(ids), 500):
                out.extend(
                    s.scalars(
                        select(SlaEpisode).where(
                            SlaEpisode.episode_id.in_(ids[start : start + 500])
                        )
                    )
                )
            return [view(e) for e in out]
        opened = s.scalars(select(SlaEpisode).where(SlaEpisode.state == EpisodeState.OPEN)).all()
        # Closed in the last day and never given their recovery stage (the closer crashed).
        unresolved = s.scalars(
            select(SlaEpisode).where(
                SlaEpisode.state == EpisodeState.CLOSED,
                SlaEpisode.closed_at >= now - timedelta(days=1),
                ~exists().where(
                    SlaEscalation.episode_id == SlaEpisode.episode_id,
                    SlaEscalation.tier == RESOLVE_TIER,
                ),
            )
        ).all()
        return [view(e) for e in (*opened, *unresolved)]


def _existing(sessions: sessionmaker[Session], episode_ids: Sequence[str]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    with sessions() as s:
        for start in range(0, len(episode_ids), 500):
            rows = s.execute(
                select(SlaEscalation.episode_id, SlaEscalation.tier).where(
                    SlaEscalation.episode_id.in_(episode_ids[start : start + 500])
                )
            ).all()
            for episode_id, tier in rows:
                out.setdefault(str(episode_id), set()).add(int(tier))
    return out


def _row(
    policy: EscalationPolicy, episode: EpisodeView, tier: int, now: datetime
) -> dict[str, Any]:
    return {
        "episode_id": episode.episode_id,
        "tier": tier,
        "action": tier_action(policy, tier),
        "task": TIER_TASKS[tier],
        "status": ActionStatus.DISPATCHED.value,
        "dispatched_at": now,
        "episode_age_s": int(episode.duration_s(now)),
        "dispatch_count": 1,
        "attempts": 0,
        "steps": {},
        "result": {},
    }


def _insert_ignoring_conflicts(
    conn: Connection, rows: list[dict[str, Any]]
) -> set[tuple[str, int]]:
    """Insert the rows that are not there yet; return the keys this call inserted."""
    dialect = conn.dialect.name
    keys = (SlaEscalation.episode_id, SlaEscalation.tier)
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert  # type: ignore[assignment]
        out: set[tuple[str, int]] = set()
        for start in range(0, len(rows), 500):
            stmt = (
                dialect_insert(SlaEscalation)
                .values(rows[start : start + 500])
                .on_conflict_do_nothing(index_elements=["episode_id", "tier"])
                .returning(*keys)
            )
            out.update((str(e), int(t)) for e, t in conn.execute(stmt).all())
        return out
    inserted = set()
    for row in rows:  # other databases: one savepoint per row
        try:
            with conn.begin_nested():
                conn.execute(insert(SlaEscalation).values(row))
            inserted.add((row["episode_id"], row["tier"]))
        except Exception:  # noqa: BLE001 - a conflict: someone else has it
            continue
    return inserted


def _forget(sessions: sessionmaker[Session], keys: Sequence[tuple[str, int]]) -> None:
    try:
        with write_connection(sessions) as conn:
            for episode_id, tier in keys:
                conn.execute(
                    delete(SlaEscalation).where(
                        SlaEscalation.episode_id == episode_id,
                        SlaEscalation.tier == tier,
                        SlaEscalation.status == ActionStatus.DISPATCHED,
                        SlaEscalation.attempts == 0,
                    )
                )
    except Exception:  # noqa: BLE001 - redispatch_stale picks them up instead
        log.exception("could not forget %d unsent escalation rows", len(keys))


def _lock_key(episode_id: str) -> str:
    return f"{KEY_PREFIX}lock:escalate:{episode_id}"


@contextmanager
def _episode_locks(deps: EngineDeps, episode_ids: Sequence[str]) -> Iterator[set[str]]:
    """Hold a short lock on each episode (one round trip for all); yields those we got."""
    if deps.redis is None:
        yield set(episode_ids)
        return
    token = uuid.uuid4().hex
    ttl_ms = int(deps.lock_ttl_s * 1000)
    pipe = deps.redis.pipeline(transaction=False)
    for episode_id in episode_ids:
        pipe.set(_lock_key(episode_id), token, nx=True, px=ttl_ms)
    got = [e for e, ok in zip(episode_ids, pipe.execute(), strict=True) if ok]
    try:
        yield set(got)
    finally:
        if got:
            # Delete only the locks still ours (a pass outliving its TTL loses them).
            pipe = deps.redis.pipeline(transaction=False)
            for episode_id in got:
                pipe.get(_lock_key(episode_id))
            values = pipe.execute()
            pipe = deps.redis.pipeline(transaction=False)
            for episode_id, value in zip(got, values, strict=True):
                if value == token:
                    pipe.delete(_lock_key(episode_id))
            pipe.execute()
