"""Violation episodes: opened by a breach, closed by sustained compliance.

The rules (``escalation.recovery_samples`` = N, 2 by default):

* No open episode: a BREACH sample opens one (agent, breached terms, opened at
  the sample's time). Any other sample changes nothing.
* Open episode, BREACH: the episode goes on; its recovery count goes back to 0
  and the newly breached terms are added.
* Open episode, COMPLIANT: the recovery count goes up. At N consecutive
  compliant samples the episode closes, and the violation is taken to have
  ended at the first of them. So one good sample between two bad ones
  (flapping) never closes an episode and opens a new one: the episode, its
  duration and the tiers it reached carry on.
* Open episode, UNKNOWN (no fresh snapshot to judge): nothing.
* While an episode is recovering (count > 0) no new tier starts; a breach
  resumes escalation at the tier its whole duration has reached.
* A breach after a close opens a new episode, with its own tiers.

Closing restores the traffic weight tier 2 cut. A frozen agent (tier 4) stays
paused with its wallet frozen when its episode closes: only a human release
(:mod:`fleet.approvals.release`) undoes that.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fleet.sla.compliance import Sample, Verdict
from fleet.sla.models import EpisodeState, SlaEpisode
from fleet.storage.db import write_session
from fleet.storage.records import Agent, AgentStatus


class EpisodeError(Exception):
    pass


class EpisodeNotFound(EpisodeError):
    pass


class EpisodeClosed(EpisodeError):
    pass


class Transition(StrEnum):
    NONE = "none"  # no episode, and none opened
    OPENED = "opened"
    CONTINUED = "continued"
    RECOVERING = "recovering"
    CLOSED = "closed"
    UNCHANGED = "unchanged"  # an open episode this sample says nothing about


@dataclass(frozen=True)
class EpisodeView:
    episode_id: str
    agent_id: str
    fleet: str
    sla_id: str | None
    state: EpisodeState
    breached_terms: tuple[str, ...]
    opened_at: datetime
    opened_by: str
    last_breach_at: datetime
    compliant_streak: int
    recovering_since: datetime | None
    counterparty: str | None
    disputed_amount: str | None
    acked_by: str | None
    acked_at: datetime | None
    ack_until: datetime | None
    weight_before: str | None
    closed_at: datetime | None
    close_reason: str | None

    @property
    def is_open(self) -> bool:
        return self.state is EpisodeState.OPEN

    @property
    def recovering(self) -> bool:
        return self.is_open and self.compliant_streak > 0

    def violation_end(self) -> datetime | None:
        """When the violation stopped (None: still going on)."""
        return self.closed_at if self.closed_at is not None else self.recovering_since

    def duration_s(self, now: datetime) -> float:
        end = self.closed_at if self.closed_at is not None else now
        return max(0.0, (end - self.opened_at).total_seconds())

    def acked(self, now: datetime) -> bool:
        return self.ack_until is not None and now < self.ack_until

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        def t(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        out: dict[str, Any] = {
            "episode_id": self.episode_id,
            "agent_id": self.agent_id,
            "fleet": self.fleet,
            "sla_id": self.sla_id,
            "state": self.state.value,
            "breached_terms": list(self.breached_terms),
            "opened_at": t(self.opened_at),
            "opened_by": self.opened_by,
            "last_breach_at": t(self.last_breach_at),
            "compliant_streak": self.compliant_streak,
            "recovering_since": t(self.recovering_since),
            "counterparty": self.counterparty,
            "disputed_amount": self.disputed_amount,
            "acked_by": self.acked_by,
            "acked_at": t(self.acked_at),
            "ack_until": t(self.ack_until),
            "weight_before": self.weight_before,
            "closed_at": t(self.closed_at),
            "close_reason": self.close_reason,
        }
        if now is not None:
            out["duration_s"] = int(self.duration_s(now))
        return out


def view(ep: SlaEpisode) -> EpisodeView:
    return EpisodeView(
        episode_id=ep.episode_id,
        agent_id=ep.agent_id,
        fleet=ep.fleet,
        sla_id=ep.sla_id,
        state=EpisodeState(ep.state),
        breached_terms=tuple(ep.breached_terms or ()),
        opened_at=ep.opened_at,
        opened_by=ep.opened_by,
        last_breach_at=ep.last_breach_at,
        compliant_streak=ep.compliant_streak,
        recovering_since=ep.recovering_since,
        counterparty=ep.counterparty,
        disputed_amount=ep.disputed_amount,
        acked_by=ep.acked_by,
        acked_at=ep.acked_at,
        ack_until=ep.ack_until,
        weight_before=ep.weight_before,
        closed_at=ep.closed_at,
        close_reason=ep.close_reason,
    )


@dataclass(frozen=True)
class Applied:
    transition: Transition
    episode: EpisodeView | None = None
    restored_weight: str | None = None


@dataclass(frozen=True)
class OpenContext:
    """What a new episode records beyond the sample."""

    fleet: str
    sla_id: str | None = None
    opened_by: str = "sweep"
    counterparty: str | None = None
    disputed_amount: str | None = None


def open_episode_ids(session: Session, agent_ids: Iterable[str]) -> dict[str, str]:
    """agent id → its open episode's id, for those agents that have one."""
    ids = list(agent_ids)
    out: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = session.execute(
            select(SlaEpisode.open_agent, SlaEpisode.episode_id).where(
                SlaEpisode.open_agent.in_(chunk)
            )
        ).all()
        out.update({str(a): str(e) for a, e in rows})
    return out


def apply_sample(
    sessions: sessionmaker[Session],
    sample: Sample,
    context: OpenContext,
    *,
    recovery_samples: int,
    known_open: bool | None = None,
) -> Applied:
    """Move the agent's episode by one sample (see the module's rules).

    ``known_open=False`` (the caller just looked) lets a sample that cannot
    open an episode return without touching the database.
    """
    if known_open is False and sample.verdict is not Verdict.BREACH:
        return Applied(Transition.NONE)
    for attempt in (1, 2):
        try:
            return _apply(sessions, sample, context, recovery_samples)
        except IntegrityError:
            # Someone else opened this agent's episode between our read and our
            # insert; go again and continue theirs.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _apply(
    sessions: sessionmaker[Session], sample: Sample, context: OpenContext, recovery_samples: int
) -> Applied:
    with write_session(sessions) as s:
        ep = s.scalars(
            select(SlaEpisode).where(SlaEpisode.open_agent == sample.agent_id).with_for_update()
        ).first()
        if ep is None:
            if sample.verdict is not Verdict.BREACH:
                return Applied(Transition.NONE)
            ep = SlaEpisode(
                episode_id=uuid.uuid4().hex,
                agent_id=sample.agent_id,
                fleet=context.fleet,
                sla_id=context.sla_id,
                state=EpisodeState.OPEN,
                open_agent=sample.agent_id,
                breached_terms=sorted(sample.breached_terms),
                opened_at=sample.at,
                opened_by=context.opened_by[:128],
                last_breach_at=sample.at,
                compliant_streak=0,
                counterparty=context.counterparty,
                disputed_amount=context.disputed_amount,
            )
            s.add(ep)
            s.flush()
            return Applied(Transition.OPENED, view(ep))
        if context.counterparty and not ep.counterparty:
            ep.counterparty, ep.disputed_amount = context.counterparty, context.disputed_amount
        if sample.verdict is Verdict.BREACH:
            ep.compliant_streak, ep.recovering_since = 0, None
            ep.breached_terms = sorted(set(ep.breached_terms or ()) | set(sample.breached_terms))
            ep.last_breach_at = max(ep.last_breach_at, sample.at)
            s.flush()
            return Applied(Transition.CONTINUED, view(ep))
        if sample.verdict is Verdict.UNKNOWN:
            return Applied(Transition.UNCHANGED, view(ep))
        ep.compliant_streak += 1
        ep.recovering_since = ep.recovering_since or sample.at
        if ep.compliant_streak < recovery_samples:
            s.flush()
            return Applied(Transition.RECOVERING, view(ep))
        restored = _close(s, ep, ep.recovering_since, "recovered", sample.at)
        return Applied(Transition.CLOSED, view(ep), restored)


def _close(
    s: Session, ep: SlaEpisode, ended_at: datetime, reason: str, now: datetime
) -> str | None:
    """Close in the caller's transaction; restore the traffic weight tier 2 cut. Returns the weight
    restored."""
    restored = None
    if ep.weight_before is not None:
        agent = s.scalars(
            select(Agent).where(Agent.agent_id == ep.agent_id).with_for_update()
        ).first()
        if agent is not None and agent.status in (AgentStatus.ACTIVE, AgentStatus.PAUSED):
            agent.traffic_weight = ep.weight_before
            agent.updated_at = now
            restored = ep.weight_before
    ep.state, ep.open_agent = EpisodeState.CLOSED, None
    ep.closed_at, ep.close_reason = ended_at, reason
    s.flush()
    return restored


def close_episode(
    sessions: sessionmaker[Session], episode_id: str, reason: str, now: datetime
) -> Applied:
    """Close an open episode without samples (its agent left the fleet, or an operator closed
    it)."""
    with write_session(sessions) as s:
        ep = s.scalars(
            select(SlaEpisode).where(SlaEpisode.episode_id == episode_id).with_for_update()
        ).first()
        if ep is None:
            raise EpisodeNotFound(f"no episode {episode_id!r}")
        if ep.state != EpisodeState.OPEN:
            return Applied(Transition.UNCHANGED, view(ep))
        restored = _close(s, ep, ep.recovering_since or now, reason, now)
        return Applied(Transition.CLOSED, view(ep), restored)


def acknowledge(
    sessions: sessionmaker[Session], episode_id: str, by: str, now: datetime, ack_timeout_s: float
) -> EpisodeView:
    """An operator has seen the episode: tiers ``ack_pauses_tiers`` wait until the acknowledgement
    runs out."""
    by = by.strip()
    if not by:
        raise EpisodeError("an acknowledgement needs the name of who gives it")
    with write_session(sessions) as s:
        ep = s.scalars(
            select(SlaEpisode).where(SlaEpisode.episode_id == episode_id).with_for_update()
        ).first()
        if ep is None:
            raise EpisodeNotFound(f"no episode {episode_id!r}")
        if ep.state != EpisodeState.OPEN:
            raise EpisodeClosed(f"episode {episode_id} is closed; nothing to acknowledge")
        ep.acked_by, ep.acked_at = by[:128], now
        ep.ack_until = now + timedelta(seconds=ack_timeout_s)
        s.flush()
        return view(ep)


def get_episode(sessions: sessionmaker[Session], episode_id: str) -> EpisodeView:
    with sessions() as s:
        ep = s.get(SlaEpisode, episode_id)
        if ep is None:
            raise EpisodeNotFound(f"no episode {episode_id!r}")
        return view(ep)
