"""The guarantees that rest on the database, on SQLite and PostgreSQL: one open episode per
agent, each tier sent once however many engines race, one worker per action."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fleet.escalation.actions import run_action
from fleet.escalation.engine import evaluate
from fleet.sla import service
from fleet.sla.compliance import Sample, Verdict
from fleet.sla.episodes import OpenContext, apply_sample
from fleet.sla.models import SlaEpisode
from fleet.storage.records import AgentStatus
from tests.support.databases import postgres_available, postgres_database, sqlite_database
from tests.support.sla_world import World
from tests.unit.test_escalation import run_minutes

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def db_world(
    request: pytest.FixtureRequest, tmp_path: Any, world_factory: Callable[..., World]
) -> Iterator[World]:  # noqa: F811
    if request.param == "sqlite":
        with sqlite_database(tmp_path) as url:
            yield world_factory(url=url)
    else:
        if not postgres_available():
            pytest.skip("no PostgreSQL server reachable on 127.0.0.1:5432")
        with postgres_database() as url:
            w = world_factory(url=url)
            yield w
            w.sessions.kw["bind"].dispose()


def _together(n: int, fn: Callable[[int], Any]) -> list[Any]:
    barrier, out, errors = threading.Barrier(n), [None] * n, []

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return out


def test_the_35_minute_episode_on_this_database(db_world: World) -> None:
    w = db_world
    [agent] = w.add_agents(1)
    w.gateway.breach(agent)
    log = run_minutes(w, 35, agents=[agent])
    assert [(m, name, o.status) for m, name, o in log] == [
        (0, "escalation.tier1.remediate", "done"),
        (5, "escalation.tier2.reroute", "done"),
        (15, "escalation.tier3.notify", "done"),
        (30, "escalation.tier4.freeze", "done"),
    ]
    assert w.agent(agent).status == AgentStatus.PAUSED and w.agent(agent).traffic_weight == "0.5"
    assert service.sweep_targets(w.sessions) == [agent]  # paused, but its episode is still open


def test_racing_checks_open_one_episode(db_world: World) -> None:
    w = db_world
    [agent] = w.add_agents(1)
    sample = Sample(agent, w.clock.now(), Verdict.BREACH, ("uptime_pct",))
    results = _together(
        6, lambda i: apply_sample(w.sessions, sample, OpenContext("demo"), recovery_samples=2)
    )
    assert sorted(r.transition.value for r in results) == ["continued"] * 5 + ["opened"]
    with w.sessions() as s:
        assert s.query(SlaEpisode).count() == 1


def test_racing_engines_send_each_tier_once_and_racing_workers_run_it_once(db_world: World) -> None:
    w = db_world
    agents = w.add_agents(20)
    for a in agents:
        w.gateway.breach(a)
    service.check_batch(w.sla(), agents)
    w.sent.clear()
    w.clock.advance(31 * 60)
    sent = _together(3, lambda i: evaluate(w.engine(with_locks=i % 2 == 0)))
    keys = [(d.episode_id, d.tier) for batch in sent for d in batch]
    assert len(keys) == len(set(keys)) == 20 * 3
    first = w.sent[0][1]
    outcomes = _together(
        4, lambda i: run_action(w.actions(), first["episode_id"], first["tier"], worker=f"w{i}")
    )
    assert sorted(o.status for o in outcomes).count("done") == 1
    assert {o.status for o in outcomes} <= {"done", "busy", "duplicate"}
