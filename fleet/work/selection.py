"""Agent selection for the work plane: fleet/routing.py's weighted score on live inputs.

Candidates are the agents table's routing pool (active, weight > 0) with the task's
capabilities; paused, frozen, retiring and retired agents are not active, so they get
nothing. The pool is re-read whenever any agent row changed (a fingerprint query of
``count(*)`` and ``max(updated_at)`` per decision batch), so a pause or a tier-2 cut
applies to the very next decision. Snapshots (reputation, balance, SLA margin) are
cached for ``snapshot_ttl_s``; in-flight counters are read on every batch and the
batch's own dispatches counted in as they are made.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from config.policy import RoutingPolicy
from fleet.hotstate import inflight_key
from fleet.monitoring.snapshot import Snapshot, snapshot_key
from fleet.routing import Candidate, select_agent, weight_of
from fleet.storage.records import Agent, AgentStatus
from fleet.work.outside import OutsideService, trust_reputation


@dataclass(frozen=True)
class Listed:
    """An agent of the routing pool, as the table has it."""

    agent_id: str
    fleet: str
    weight: Any  # Decimal
    capabilities: frozenset[str]
    a2a_url: str | None
    # An outside agent: a marketplace service, not one of ours (fleet.work.outside).
    service_id: str | None = None

    @property
    def outside(self) -> bool:
        return self.service_id is not None


class CandidateDirectory:
    """The routing pool, re-read when the agents table changes."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        r: redis.Redis,
        *,
        snapshot_ttl_s: float = 2.0,
    ) -> None:
        self._sessions = sessions
        self._redis = r
        self._snapshot_ttl_s = snapshot_ttl_s
        self._lock = threading.Lock()
        self._fingerprint: tuple[int, datetime | None] | None = None
        self._listed: list[Listed] = []
        self._every: frozenset[str] = frozenset()
        self._snaps: dict[str, Snapshot | None] = {}
        self._snaps_at = 0.0

    def _refresh(self) -> list[Listed]:
        with self._sessions() as s:
            count, latest = s.execute(select(func.count(), func.max(Agent.updated_at))).one()
            fingerprint = (int(count), latest)
            if fingerprint == self._fingerprint:
                return self._listed
            rows = s.execute(
                select(
                    Agent.agent_id,
                    Agent.fleet,
                    Agent.traffic_weight,
                    Agent.capabilities,
                    Agent.extra,
                ).where(Agent.status == AgentStatus.ACTIVE)
            ).all()
            every = frozenset(s.scalars(select(Agent.agent_id)).all())
        listed = [
            Listed(a, f, weight_of(w), frozenset(caps or ()), (extra or {}).get("a2a_url"))
            for a, f, w, caps, extra in rows
        ]
        with self._lock:
            self._fingerprint = fingerprint
            self._every = every
            self._listed = [x for x in listed if x.weight > 0]
            self._snaps_at = 0.0
        return self._listed

    def _snapshots(self, agent_ids: list[str]) -> dict[str, Snapshot | None]:
        now = time.monotonic()
        with self._lock:
            fresh = now - self._snaps_at < self._snapshot_ttl_s
            if fresh and all(a in self._snaps for a in agent_ids):
                return self._snaps
        pipe = self._redis.pipeline(transaction=False)
        for a in agent_ids:
            pipe.hgetall(snapshot_key(a))
        raws = pipe.execute()
        snaps = {
            a: Snapshot.from_redis(raw) if raw else None
            for a, raw in zip(agent_ids, raws, strict=True)
        }
        with self._lock:
            self._snaps, self._snaps_at = snaps, now
        return snaps

    def own_ids(self) -> frozenset[str]:
        """Every agent of ours, whatever its status: never an outside agent."""
        self._refresh()
        return self._every

    def pool(self, fleet: str | None = None) -> list[Listed]:
        listed = self._refresh()
        return [x for x in listed if fleet is None or x.fleet == fleet]

    def candidates(self, fleet: str | None = None) -> list[tuple[Listed, Candidate]]:
        """Every agent of the pool with its score inputs (snapshots, live in-flight counts)."""
        listed = self.pool(fleet)
        if not listed:
            return []
        ids = [x.agent_id for x in listed]
        snaps = self._snapshots(ids)
        flights = self._redis.mget([inflight_key(a) for a in ids])
        out = []
        for x, flight in zip(listed, flights, strict=True):
            snap = snaps.get(x.agent_id)
            out.append(
                (
                    x,
                    Candidate(
                        x.agent_id,
                        x.weight,
                        AgentStatus.ACTIVE,
                        reputation=snap.reputation if snap else None,
                        balance=snap.balance if snap else None,
                        in_flight=int(flight or 0),
                        sla_compliant=snap.sla_compliant if snap else None,
                        sla_margin_pct=snap.sla_margin_pct if snap else None,
                    ),
                )
            )
        return out


class Picker:
    """Picks agents for one batch of tasks, counting the batch's own dispatches."""

    def __init__(
        self,
        candidates: Sequence[tuple[Listed, Candidate]],
        policy: RoutingPolicy,
        *,
        exclude_breached: bool,
        rng: random.Random,
    ) -> None:
        self._policy = policy
        self._rng = rng
        self._by_id = {
            c.agent_id: (x, c)
            for x, c in candidates
            if not (exclude_breached and c.sla_compliant is False)
        }

    @property
    def own_agents(self) -> frozenset[str]:
        return frozenset(a for a, (x, _) in self._by_id.items() if not x.outside)

    def add_outside(self, outside: Sequence[tuple[Listed, Candidate]]) -> None:
        """Outside candidates (marketplace services) beside our own agents; our own agent
        of the same id wins, and our paused/breached rules do not apply to them."""
        for x, c in outside:
            if c.agent_id not in self._by_id:
                self._by_id[c.agent_id] = (x, c)

    def pick(self, capabilities: Collection[str], exclude: Collection[str] = ()) -> Listed | None:
        need = frozenset(capabilities)
        cap = self._policy.outside.max_inflight_per_agent
        pool = [
            c
            for a, (x, c) in self._by_id.items()
            if a not in exclude
            and need <= x.capabilities
            and not (x.outside and c.in_flight >= cap)
        ]
        chosen = select_agent(pool, self._policy, self._rng)
        if chosen is None:
            return None
        x, c = self._by_id[chosen.agent_id]
        self._by_id[chosen.agent_id] = (x, replace(c, in_flight=c.in_flight + 1))
        return x


def outside_candidates(
    services: Sequence[OutsideService], fleet: str | None, r: redis.Redis
) -> list[tuple[Listed, Candidate]]:
    """Outside services as candidates: reputation from the trust score, no budget headroom
    of ours, idleness from their in-flight counters, no SLA margin (not known)."""
    if not services:
        return []
    flights = r.mget([inflight_key(s.agent_id) for s in services])
    out = []
    for s, flight in zip(services, flights, strict=True):
        listed = Listed(
            s.agent_id,
            fleet or "",
            Decimal(1),
            s.capabilities,
            s.endpoint,
            service_id=s.service_id,
        )
        out.append(
            (
                listed,
                Candidate(
                    s.agent_id,
                    Decimal(1),
                    AgentStatus.ACTIVE,
                    reputation=trust_reputation(s.trust_score),
                    balance=None,
                    in_flight=int(flight or 0),
                    sla_compliant=None,
                    sla_margin_pct=0.0,  # no SLA margin: none is known for them
                ),
            )
        )
    return out
