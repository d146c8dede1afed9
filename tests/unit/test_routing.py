"""Weighted agent selection over the routing table that escalation writes."""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal

from config.policy import RoutingPolicy
from fleet.escalation.engine import evaluate
from fleet.hotstate import inflight_key
from fleet.monitoring.snapshot import Health, Snapshot, write_snapshots
from fleet.routing import Candidate, load_candidates, score, select_agent, shares
from fleet.sla import service
from fleet.storage.records import AgentStatus
from tests.support.sla_world import START, World

POLICY = RoutingPolicy()


def test_score_is_the_operations_formula() -> None:
    c = Candidate(
        "a",
        Decimal(1),
        reputation=0.9,
        balance=Decimal("50"),
        in_flight=5,
        sla_compliant=True,
        sla_margin_pct=40.0,
    )
    assert score(c, POLICY) == 0.4 * 0.9 + 0.2 * 0.5 + 0.2 * 0.5 + 0.2 * 0.4
    rich = Candidate(
        "b", Decimal(1), reputation=1.0, balance=Decimal("500"), in_flight=0, sla_margin_pct=100.0
    )
    assert score(rich, POLICY) == 1.0
    breached = Candidate(
        "c",
        Decimal(1),
        reputation=1.0,
        balance=Decimal("500"),
        sla_compliant=False,
        sla_margin_pct=-30,
    )
    assert score(breached, POLICY) == 0.8


def test_paused_and_zero_weight_agents_are_never_selected() -> None:
    pool = [
        Candidate("paused", Decimal(1), AgentStatus.PAUSED, reputation=1.0),
        Candidate("retiring", Decimal(0), reputation=1.0),
        Candidate("ok", Decimal(1), reputation=0.2),
    ]
    rng = random.Random(7)
    assert {select_agent(pool, POLICY, rng).agent_id for _ in range(200)} == {"ok"}  # type: ignore[union-attr]
    assert select_agent(pool[:2], POLICY, rng) is None
    assert shares(pool, POLICY) == {"ok": 1.0}


def test_a_cut_weight_halves_the_share() -> None:
    same = dict(reputation=0.8, balance=Decimal("100"), sla_compliant=True, sla_margin_pct=50.0)
    pool = [Candidate("a", Decimal("0.5"), **same), Candidate("b", Decimal(1), **same)]  # type: ignore[arg-type]
    assert shares(pool, POLICY) == {"a": 1 / 3, "b": 2 / 3}
    rng = random.Random(1)
    picks = Counter(select_agent(pool, POLICY, rng).agent_id for _ in range(3000))  # type: ignore[union-attr]
    assert 0.29 < picks["a"] / 3000 < 0.37


def test_the_routing_table_follows_escalation(world: World) -> None:
    w = world
    agents = w.add_agents(3)
    now = START.timestamp()
    write_snapshots(
        w.redis,
        [
            Snapshot(
                a,
                now,
                Health.HEALTHY,
                reputation=0.9,
                balance=Decimal("80"),
                sla_compliant=True,
                sla_margin_pct=30.0,
            )
            for a in agents
        ],
    )
    w.redis.set(inflight_key(agents[2]), 10)
    pool = {c.agent_id: c for c in load_candidates(w.sessions, w.redis, fleet="demo")}
    assert (
        set(pool) == set(agents)
        and pool[agents[2]].in_flight == 10
        and pool[agents[0]].reputation == 0.9
    )
    assert score(pool[agents[2]], POLICY) < score(pool[agents[0]], POLICY)

    w.gateway.breach(agents[0])
    service.check_batch(w.sla(), agents)
    w.clock.advance(5 * 60)
    evaluate(w.engine())
    w.run_sent()
    pool = {c.agent_id: c for c in load_candidates(w.sessions, w.redis)}
    assert pool[agents[0]].traffic_weight == Decimal(
        "0.5"
    )  # tier 2 cut it in the table routing reads
    w.clock.advance(25 * 60)
    evaluate(w.engine())
    w.run_sent()
    pool = {c.agent_id: c for c in load_candidates(w.sessions, w.redis)}
    assert agents[0] not in pool  # tier 4 paused it: out of every pool
    assert load_candidates(w.sessions, None, capability="translation") == []
