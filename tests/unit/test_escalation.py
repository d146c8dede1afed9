"""Escalation with a movable clock: the engine and the tier actions, called directly."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select

from fleet.approvals.models import ApprovalRequest, RequestStatus
from fleet.escalation.actions import run_action
from fleet.escalation.engine import TIER_TASKS, due_tiers, evaluate, redispatch_stale
from fleet.sla import service
from fleet.sla.episodes import get_episode
from fleet.sla.models import ActionStatus, SlaDispute, SlaEscalation
from fleet.storage.db import write_session
from fleet.storage.records import Agent, AgentStatus
from tests.support.sla_world import World

CHECK_EVERY_MIN = 5


def run_minutes(
    w: World,
    minutes: int,
    *,
    on_minute: Callable[[int], None] | None = None,
    agents: list[str] | None = None,
) -> list[tuple[int, str, Any]]:
    """Minute by minute: a check every 5 min, the engine tick every minute, the workers drain.
    Returns (minute, task sent, outcome) in the order things ran."""
    log = []
    start = w.clock.now()
    for minute in range(minutes + 1):
        w.clock.set(start + timedelta(minutes=minute))
        if on_minute:
            on_minute(minute)
        if minute % CHECK_EVERY_MIN == 0 and agents:
            service.check_batch(w.sla(), agents)
        evaluate(w.engine())
        for (name, _), outcome in w.run_sent():
            log.append((minute, name, outcome))
    return log


def escalations(w: World, episode_id: str) -> list[SlaEscalation]:
    with w.sessions() as s:
        return list(
            s.scalars(
                select(SlaEscalation)
                .where(SlaEscalation.episode_id == episode_id)
                .order_by(SlaEscalation.dispatched_at, SlaEscalation.tier)
            )
        )


def test_an_episode_of_35_minutes_runs_tiers_1_to_4_once_each_in_order_on_their_own_queues(
    world: World,
) -> None:
    w = world
    [agent] = w.add_agents(1)
    w.gateway.breach(agent, "p99_latency_ms")
    log = run_minutes(w, 35, agents=[agent])

    assert [(m, name) for m, name, _ in log] == [
        (0, "escalation.tier1.remediate"),
        (5, "escalation.tier2.reroute"),
        (15, "escalation.tier3.notify"),
        (30, "escalation.tier4.freeze"),
    ]
    assert all(o.status == "done" for _, _, o in log), [o for _, _, o in log]
    episode_id = log[0][2].episode_id
    rows = escalations(w, episode_id)
    assert [(r.tier, r.queue, r.status, r.dispatch_count, r.attempts) for r in rows] == [
        (1, "escalation.tier1", "done", 1, 1),
        (2, "escalation.tier2", "done", 1, 1),
        (3, "escalation.tier3", "done", 1, 1),
        (4, "escalation.tier4", "done", 1, 1),
    ]
    assert [r.episode_age_s // 60 for r in rows] == [0, 5, 15, 30]

    # Tier 1 called the remediation hook; tier 2 halved the routing weight;
    # tier 3 told the operator, as an AI; tier 4 paused, froze and asked a human.
    assert (
        w.hook_calls
        and w.hook_calls[0]["agent_id"] == agent
        and "restart" in w.hook_calls[0]["requested"]
    )
    assert rows[1].result["before"] == "1" and rows[1].result["after"] == "0.5"
    assert w.agent(agent).status == AgentStatus.PAUSED
    assert agent in w.gateway.frozen
    notes = [m for m in w.gateway.messages if m["recipient"] == "fleet-operator"]
    assert len(notes) == 2 and all("AI agent" in m["body"] for m in notes)
    with w.sessions() as s:
        release = s.scalars(
            select(ApprovalRequest).where(ApprovalRequest.action == "release_agent")
        ).all()
    assert (
        len(release) == 1
        and release[0].status == RequestStatus.PENDING
        and release[0].subject == agent
    )
    assert rows[3].result["release_request"] == release[0].request_id

    # Nothing more happens however long it lasts: each tier once per episode.
    assert run_minutes(w, 30, agents=[agent]) == []
    assert w.gateway.calls["freeze_wallet"] == 1 and w.gateway.calls["send_message"] == 2
    actions = [e.action for e in w.events if e.subject == agent]
    assert actions.count("freeze_agent") == 1 and actions.count("sla_episode_opened") == 1


def test_an_episode_recovering_at_20_minutes_stops_after_tier_3_restores_traffic_and_says_so(
    world: World,
) -> None:
    w = world
    [agent, other] = w.add_agents(2)
    w.gateway.breach(agent)

    def recover(minute: int) -> None:
        if minute == 20:
            w.gateway.comply(agent)

    log = run_minutes(w, 40, agents=[agent, other], on_minute=recover)
    assert [(m, name) for m, name, _ in log] == [
        (0, "escalation.tier1.remediate"),
        (5, "escalation.tier2.reroute"),
        (15, "escalation.tier3.notify"),
        # Two compliant samples (20 and 25 min) close it: the resolved notice.
        (25, "escalation.tier3.resolve"),
    ]
    episode = get_episode(w.sessions, log[0][2].episode_id)
    assert not episode.is_open and episode.close_reason == "recovered"
    assert episode.closed_at == episode.opened_at + timedelta(
        minutes=20
    )  # the violation ended at 20 min
    assert w.agent(agent).traffic_weight == "1" and w.agent(agent).status == AgentStatus.ACTIVE
    assert agent not in w.gateway.frozen
    resolved = w.gateway.messages[-1]
    assert (
        resolved["subject"].startswith("SLA resolved")
        and "traffic weight is restored" in resolved["body"]
    )
    assert "AI agent" in resolved["body"]


def test_one_good_sample_between_bad_ones_does_not_close_the_episode(world: World) -> None:
    w = world
    [agent] = w.add_agents(1)
    w.gateway.breach(agent)
    flips = {5: "comply", 10: "breach", 15: "comply", 20: "breach"}

    def flap(minute: int) -> None:
        if flips.get(minute) == "comply":
            w.gateway.comply(agent)
        elif flips.get(minute) == "breach":
            w.gateway.breach(agent)

    log = run_minutes(w, 31, agents=[agent], on_minute=flap)
    sent = [(m, name) for m, name, _ in log]
    # Escalation holds while it looks recovered, and resumes at the tier its age reached.
    assert sent == [
        (0, "escalation.tier1.remediate"),
        (10, "escalation.tier2.reroute"),
        (20, "escalation.tier3.notify"),
        (30, "escalation.tier4.freeze"),
    ]
    assert len({o.episode_id for _, _, o in log}) == 1  # one episode throughout


def test_a_breach_after_a_close_opens_a_new_episode_with_its_own_tiers(world: World) -> None:
    w = world
    [agent] = w.add_agents(1)
    w.gateway.breach(agent)
    first = run_minutes(
        w, 10, agents=[agent], on_minute=lambda m: w.gateway.comply(agent) if m == 5 else None
    )
    w.gateway.breach(agent)
    second = run_minutes(w, 6, agents=[agent])
    assert [n for _, n, _ in first] == ["escalation.tier1.remediate", "escalation.tier3.resolve"]
    assert [n for _, n, _ in second] == ["escalation.tier1.remediate", "escalation.tier2.reroute"]
    assert first[0][2].episode_id != second[0][2].episode_id


def test_a_redelivered_or_duplicated_tier_message_changes_nothing(world: World) -> None:
    w = world
    [agent] = w.add_agents(1)
    w.gateway.breach(agent)
    log = run_minutes(w, 31, agents=[agent])
    episode_id = log[0][2].episode_id
    before_calls, before_hook, before_events = (
        dict(w.gateway.calls),
        len(w.hook_calls),
        len(w.events),
    )
    deps = w.actions()
    for tier in (1, 2, 3, 4):
        again = run_action(
            deps, episode_id, tier, worker="another-worker", queue=f"escalation.tier{tier}"
        )
        assert again.status == "duplicate" and again.retry_in is None
    assert dict(w.gateway.calls) == before_calls and len(w.hook_calls) == before_hook
    assert len(w.events) == before_events
    assert w.agent(agent).traffic_weight == "0.5"  # cut once, not twice
    assert [r.status for r in escalations(w, episode_id)] == ["done"] * 4


def test_a_duplicate_while_the_first_is_running_waits_and_then_does_nothing(world: World) -> None:
    w = world
    [agent] = w.add_agents(1)
    w.gateway.breach(agent)
    service.check_batch(w.sla(), [agent])
    [(name, kwargs)] = w.sent
    w.sent.clear()
    deps = w.actions()
    entered, release = threading.Event(), threading.Event()
    original = deps.http

    class SlowHook(httpx.Client):
        def post(self, *args: Any, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
            entered.set()
            release.wait(5)
            return original.post(*args, **kwargs)

    deps.http = SlowHook()
    results: list[Any] = []
    first = threading.Thread(
        target=lambda: results.append(run_action(deps, kwargs["episode_id"], 1, worker="w1"))
    )
    first.start()
    assert entered.wait(5)
    second = run_action(w.actions(), kwargs["episode_id"], 1, worker="w2")
    assert second.status == "busy" and second.retry_in is not None and second.retry_in > 0
    release.set()
    first.join(5)
    assert results[0].status == "done" and len(w.hook_calls) == 1
    assert run_action(w.actions(), kwargs["episode_id"], 1, worker="w2").status == "duplicate"


def test_two_engines_racing_send_each_tier_once(world: World) -> None:
    w = world
    agents = w.add_agents(30)
    for a in agents:
        w.gateway.breach(a)
    service.check_batch(w.sla(), agents)
    w.sent.clear()
    w.clock.advance(31 * 60)  # caught up late: tiers 2, 3, 4 all due at once
    barrier = threading.Barrier(2)
    sent: list[Any] = []

    def engine() -> None:
        barrier.wait()
        sent.extend(evaluate(w.engine(with_locks=True)))

    threads = [threading.Thread(target=engine) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    sent.extend(evaluate(w.engine(with_locks=True)))  # a third pass finds everything sent
    keys = [(d.episode_id, d.tier) for d in sent]
    assert len(keys) == len(set(keys)) == 30 * 3
    by_episode: dict[str, list[int]] = {}
    for _, kwargs in w.sent:
        by_episode.setdefault(kwargs["episode_id"], []).append(kwargs["tier"])
    assert all(tiers == [2, 3, 4] for tiers in by_episode.values())  # in order, per episode


def test_acknowledgement_holds_tiers_3_and_4_until_it_runs_out(world_factory: Any) -> None:
    w = world_factory(escalation__ack_timeout_s=1200)
    [agent] = w.add_agents(1)
    w.gateway.breach(agent)
    acked: list[str] = []

    def ack(minute: int) -> None:
        if minute == 10:
            episode_id = service.open_episode_of(w.sessions, agent)
            assert episode_id is not None
            service.acknowledge_episode(
                w.sessions, w.policy, w.clock, episode_id, "alice", "looking into it"
            )
            acked.append(episode_id)

    log = run_minutes(w, 31, agents=[agent], on_minute=ack)
    # Tier 2 still ran (automated tiers run while unresolved); 3 and 4 waited for the ack to
    # lapse at 30 min.
    assert [(m, n) for m, n, _ in log] == [
        (0, "escalation.tier1.remediate"),
        (5, "escalation.tier2.reroute"),
        (30, "escalation.tier3.notify"),
        (30, "escalation.tier4.freeze"),
    ]
    assert any(e.action == "sla_episode_acknowledged" and e.actor == "user:alice" for e in w.events)


def test_tiers_due_is_pure_and_follows_the_policy(world: World) -> None:
    w = world
    [agent] = w.add_agents(1)
    w.gateway.breach(agent)
    service.check_batch(w.sla(), [agent])
    episode = get_episode(w.sessions, w.sent[0][1]["episode_id"])
    at = episode.opened_at
    policy = w.policy.escalation
    assert due_tiers(policy, episode, at) == [1]
    assert due_tiers(policy, episode, at + timedelta(seconds=299)) == [1]
    assert due_tiers(policy, episode, at + timedelta(seconds=300)) == [1, 2]
    assert due_tiers(policy, episode, at + timedelta(minutes=15)) == [1, 2, 3]
    assert due_tiers(policy, episode, at + timedelta(minutes=30)) == [1, 2, 3, 4]


def test_a_dispute_is_opened_on_the_held_escrow_and_resolved_by_policy_on_recovery(
    world: World,
) -> None:
    w = world
    [agent] = w.add_agents(1)
    w.keys.add(agent, w.gateway.rest.mint(agent, "pro"))  # disputes need a pro key
    w.gateway.rest.escrows["esc-1"] = {"status": "held", "amount": "12.4"}
    with write_session(w.sessions) as s:
        row = s.get(Agent, agent)
        assert row is not None
        row.extra = {"escrows": {"buyer-0042": "esc-1"}}
    w.gateway.breach(agent, "p99_latency_ms")
    out = service.evaluate_agent(w.sla(), agent, "alert:sla-breach", counterparty="buyer-0042")
    assert out["episode_id"] and out["transitions"] == {"opened": 1}
    run_minutes(
        w, 25, agents=[agent], on_minute=lambda m: w.gateway.comply(agent) if m == 18 else None
    )
    [dispute] = w.gateway.disputes.values()
    assert dispute["escrow_id"] == "esc-1" and dispute["opener"] == agent
    assert dispute["status"] == "resolved" and dispute["resolution"] == "refund"
    assert dispute["resolved_by"] == "fleet-admin" and "Resolved per SLA" in dispute["notes"]
    assert w.gateway.rest.escrows["esc-1"]["status"] == "refunded"
    with w.sessions() as s:
        [row] = s.scalars(select(SlaDispute)).all()
    assert (row.status, row.claimed, row.refund) == ("resolved", "12.40", "12.40")
    audited = [e.action for e in w.events]
    assert "open_dispute" in audited and "resolve_dispute" in audited


def test_a_transient_gateway_failure_retries_the_action_and_resumes_after_its_finished_steps(
    world: World,
) -> None:
    w = world
    [agent] = w.add_agents(1)
    w.gateway.breach(agent)
    run_minutes(w, 29, agents=[agent])
    w.clock.advance(60)
    evaluate(w.engine())
    [(name, kwargs)] = w.sent
    assert name == TIER_TASKS[4]
    w.sent.clear()
    w.gateway.fail_tools["send_message"] = 503  # the last step fails
    deps = w.actions()
    first = run_action(deps, kwargs["episode_id"], 4, worker="w1")
    assert first.status == "retry" and first.retry_in == w.policy.escalation.action_retry_s
    assert w.gateway.calls["freeze_wallet"] == 1 and w.agent(agent).status == AgentStatus.PAUSED
    del w.gateway.fail_tools["send_message"]
    second = run_action(deps, kwargs["episode_id"], 4, worker="w2")
    assert second.status == "done"
    assert w.gateway.calls["freeze_wallet"] == 1  # not frozen twice: the step was recorded
    with w.sessions() as s:
        assert (
            s.scalar(
                select(ApprovalRequest.request_id).where(ApprovalRequest.action == "release_agent")
            )
            is not None
        )
        assert (
            len(
                s.scalars(
                    select(ApprovalRequest).where(ApprovalRequest.action == "release_agent")
                ).all()
            )
            == 1
        )


def test_an_action_rated_high_waits_for_a_human_and_then_runs(world_factory: Any) -> None:
    w = world_factory(approvals__matrix__freeze_agent="HIGH")
    [agent] = w.add_agents(1)
    w.gateway.breach(agent)
    log = run_minutes(w, 30, agents=[agent])
    held = log[-1][2]
    assert (
        held.status == "held"
        and agent not in w.gateway.frozen
        and w.agent(agent).status == AgentStatus.ACTIVE
    )
    approval_id = held.result["approval_id"]
    approvals = w.actions().approvals
    approvals.approve(approval_id, "bob")
    [view] = approvals.awaiting_dispatch()
    assert view.task == TIER_TASKS[4]
    done = run_action(
        w.actions(), view.task_kwargs["episode_id"], 4, worker="w1", approval_id=approval_id
    )
    assert (
        done.status == "done"
        and agent in w.gateway.frozen
        and w.agent(agent).status == AgentStatus.PAUSED
    )
    again = run_action(
        w.actions(), view.task_kwargs["episode_id"], 4, worker="w1", approval_id=approval_id
    )
    assert again.status == "duplicate"


def test_a_lost_message_is_sent_again_and_a_tier_of_a_closed_episode_is_skipped(
    world: World,
) -> None:
    w = world
    [agent] = w.add_agents(1)
    w.gateway.breach(agent)
    service.check_batch(w.sla(), [agent])
    [(name, kwargs)] = w.sent
    w.sent.clear()  # the message never reached a worker
    assert redispatch_stale(w.engine()) == []
    w.clock.advance(w.policy.escalation.redispatch_after_s + 1)
    again = redispatch_stale(w.engine())
    assert [(d.tier, d.task) for d in again] == [(1, name)] and w.sent == [(name, kwargs)]
    w.sent.clear()
    # The agent recovers before the (re)sent tier-1 message is worked off.
    w.gateway.comply(agent)
    service.check_batch(w.sla(), [agent])
    service.check_batch(w.sla(), [agent])
    outcome = run_action(w.actions(), kwargs["episode_id"], 1, worker="w1")
    assert outcome.status == ActionStatus.SKIPPED and w.hook_calls == []


def test_a_frozen_agent_stays_frozen_after_recovery_until_a_human_releases_it(world: World) -> None:
    from fleet.approvals.release import release_agent

    w = world
    [agent] = w.add_agents(1)
    w.gateway.breach(agent)
    log = run_minutes(w, 30, agents=[agent])
    freeze = log[-1][2]
    assert (
        freeze.tier == 4
        and w.agent(agent).status == AgentStatus.PAUSED
        and agent in w.gateway.frozen
    )
    w.gateway.comply(agent)
    closing = run_minutes(
        w, 10, agents=[agent]
    )  # a paused agent is still checked: its episode can close
    assert [n for _, n, _ in closing] == ["escalation.tier3.resolve"]
    assert w.agent(agent).status == AgentStatus.PAUSED and agent in w.gateway.frozen
    assert (
        w.agent(agent).traffic_weight == "1"
    )  # restored, but paused: out of every pool until released
    assert "stays paused with its wallet frozen" in w.gateway.messages[-1]["body"]

    approvals = w.actions().approvals
    request_id = freeze.result["release_request"]
    approvals.approve(request_id, "bob", "root cause fixed")
    assert release_agent(approvals, w.sessions, w.client, request_id=request_id, agent_id=agent)
    assert w.agent(agent).status == AgentStatus.ACTIVE and agent not in w.gateway.frozen
