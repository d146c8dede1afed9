"""Routing: which agent gets the next piece of work (operations §5, weighted selection).

The routing table is the ``agents`` table: an agent is in a routing pool when
its status is ``active`` and its ``traffic_weight`` (a decimal string, "1" is a
full share) is above zero. Escalation writes it: tier 2 cuts an agent's
weight by ``traffic_cut_fraction`` and recovery restores it; tier 4 pauses the
agent, which takes it out of every pool; retirement sets the weight to 0.

Selection, per candidate::

    score  = reputation_weight × reputation                       (0..1)
           + headroom_weight   × min(balance / full_headroom_balance, 1)
           + idleness_weight   × (1 − min(in_flight / busy_inflight, 1))
           + sla_margin_weight × SLA margin (0 when in breach, 1 at a 100 % margin)
    chance ∝ traffic_weight × score

so SLA compliance is checked before work is sent: an agent in breach loses
its margin share, and once tier 2 has run, half its traffic goes to the
others. Scores come from the metrics sweep's snapshot (reputation, balance,
SLA margin) and the in-flight counters in Redis; an agent with no snapshot
yet scores on what is known.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.policy import RoutingPolicy
from fleet.hotstate import inflight_key
from fleet.monitoring.snapshot import Snapshot, snapshot_key
from fleet.storage.records import Agent, AgentStatus


@dataclass(frozen=True)
class Candidate:
    agent_id: str
    traffic_weight: Decimal
    status: str = AgentStatus.ACTIVE
    reputation: float | None = None
    balance: Decimal | None = None
    in_flight: int = 0
    sla_compliant: bool | None = None
    sla_margin_pct: float | None = None


def weight_of(text: str | None) -> Decimal:
    try:
        value = Decimal(text or "0")
    except InvalidOperation:
        return Decimal(0)
    return value if value.is_finite() and value > 0 else Decimal(0)


def eligible(c: Candidate) -> bool:
    return c.status == AgentStatus.ACTIVE and c.traffic_weight > 0


def sla_margin(c: Candidate) -> float:
    if c.sla_compliant is False:
        return 0.0
    if c.sla_margin_pct is None:
        return 1.0 if c.sla_compliant else 0.5
    return min(max(c.sla_margin_pct / 100.0, 0.0), 1.0)


def score(c: Candidate, policy: RoutingPolicy) -> float:
    reputation = min(max(c.reputation if c.reputation is not None else 0.5, 0.0), 1.0)
    headroom = (
        0.0
        if c.balance is None
        else float(min(max(c.balance / policy.full_headroom_balance, Decimal(0)), Decimal(1)))
    )
    idleness = 1.0 - min(c.in_flight / policy.busy_inflight, 1.0)
    return (
        policy.reputation_weight * reputation
        + policy.headroom_weight * headroom
        + policy.idleness_weight * idleness
        + policy.sla_margin_weight * sla_margin(c)
    )


def shares(candidates: Sequence[Candidate], policy: RoutingPolicy) -> dict[str, float]:
    """Each eligible agent's chance of getting the next item (sums to 1, or empty)."""
    weights = {
        c.agent_id: float(c.traffic_weight) * score(c, policy) for c in candidates if eligible(c)
    }
    total = sum(weights.values())
    return {a: w / total for a, w in weights.items()} if total > 0 else {}


def select_agent(
    candidates: Sequence[Candidate], policy: RoutingPolicy, rng: random.Random | None = None
) -> Candidate | None:
    """One agent by weighted chance; None when no agent is eligible (all paused, cut to zero)."""
    pool = [c for c in candidates if eligible(c)]
    weights = [float(c.traffic_weight) * score(c, policy) for c in pool]
    if not pool or sum(weights) <= 0:
        return None
    return (rng or random).choices(pool, weights=weights, k=1)[0]


def load_candidates(
    sessions: sessionmaker[Session],
    r: redis.Redis | None = None,
    *,
    fleet: str | None = None,
    id_prefix: str | None = None,
    capability: str | None = None,
) -> list[Candidate]:
    """The routing pool from the table (active, weight > 0), scored from Redis when given."""
    stmt = select(Agent.agent_id, Agent.status, Agent.traffic_weight, Agent.capabilities).where(
        Agent.status == AgentStatus.ACTIVE
    )
    if fleet is not None:
        stmt = stmt.where(Agent.fleet == fleet)
    if id_prefix is not None:
        stmt = stmt.where(Agent.id_prefix == id_prefix)
    with sessions() as s:
        listed = [
            (a, st, w)
            for a, st, w, caps in s.execute(stmt)
            if capability is None or capability in (caps or [])
        ]
    # The table keeps the weight as text; routing weighs with its Decimal.
    weighted = [(a, st, weight_of(w)) for a, st, w in listed]
    rows = [row for row in weighted if row[2] > 0]
    snaps: list[dict[str, str]] = []
    flights: list[str | None] = []
    if r is not None and rows:
        pipe = r.pipeline(transaction=False)
        for agent_id, _, _ in rows:
            pipe.hgetall(snapshot_key(agent_id))
            pipe.get(inflight_key(agent_id))
        answers = pipe.execute()
        snaps, flights = answers[0::2], answers[1::2]
    out = []
    for i, (agent_id, status, weight) in enumerate(rows):
        snap = Snapshot.from_redis(snaps[i]) if i < len(snaps) and snaps[i] else None
        out.append(
            Candidate(
                agent_id,
                weight,
                str(status),
                reputation=snap.reputation if snap else None,
                balance=snap.balance if snap else None,
                in_flight=int(flights[i] or 0) if i < len(flights) else 0,
                sla_compliant=snap.sla_compliant if snap else None,
                sla_margin_pct=snap.sla_margin_pct if snap else None,
            )
        )
    return out
