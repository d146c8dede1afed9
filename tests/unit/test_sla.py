"""SLA enforcement, pure and with a fake gateway: samples, episodes, sweeps, budgets, alerts."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import select

from config.errors import ConfigError
from config.policy import ErrorBudgetPolicy, load_policy
from fleet.escalation.engine import evaluate
from fleet.monitoring.snapshot import Health, Snapshot, write_snapshots
from fleet.sla import service
from fleet.sla.alerts import AlertDeps, evaluate_burn_alerts
from fleet.sla.budget import burn_rate, compute_budget, evaluate_burn, rule_name
from fleet.sla.compliance import Verdict, decide
from fleet.sla.contracts import UnknownTemplate, template_terms
from fleet.sla.episodes import EpisodeClosed, close_episode, get_episode
from fleet.sla.metrics import register_sla_collector
from fleet.sla.models import SlaBurnAlert, SlaEpisode
from fleet.sla.status import agent_report, fleet_report
from fleet.storage.db import write_session
from fleet.storage.records import Agent, AgentStatus
from tests.support.sla_world import START, World, write_policy

TERMS = {"p99_latency_ms": 2000, "max_error_rate": "0.05", "uptime_pct": "99.5"}


def _snap(
    agent: str,
    *,
    age_s: float = 10,
    p99: float | None = 800,
    errors: float | None = 0.01,
    health: Health = Health.HEALTHY,
) -> Snapshot:
    return Snapshot(agent, START.timestamp() - age_s, health, latency_p99=p99, error_rate=errors)


# ------------------------------------------------------------------------------ the sample


@pytest.mark.parametrize(
    ("snap", "verdict", "source", "terms"),
    [
        (_snap("a"), Verdict.COMPLIANT, "snapshot", ()),
        (_snap("a", p99=4000), Verdict.BREACH, "snapshot", ("p99_latency_ms",)),
        (_snap("a", errors=0.2), Verdict.BREACH, "snapshot", ("max_error_rate",)),
        (
            _snap("a", p99=4000, errors=0.2, health=Health.CRITICAL),
            Verdict.BREACH,
            "snapshot",
            ("p99_latency_ms", "max_error_rate"),
        ),
        # A term the poll could not measure is not judged (uptime never is).
        (_snap("a", p99=None, errors=None), Verdict.COMPLIANT, "snapshot", ()),
        # A stale snapshot or a failed poll says nothing, breach or not.
        (_snap("a", p99=4000, age_s=900), Verdict.UNKNOWN, "none", ()),
        (_snap("a", p99=4000, health=Health.UNKNOWN), Verdict.UNKNOWN, "none", ()),
        (None, Verdict.UNKNOWN, "none", ()),
    ],
)
def test_sample_decision_table(
    snap: Snapshot | None, verdict: Verdict, source: str, terms: tuple[str, ...]
) -> None:
    sample = decide("a", START, snap, TERMS, snapshot_max_age_s=300)
    assert (sample.verdict, sample.source, sample.breached_terms) == (verdict, source, terms)
    assert sample.at == START and sample.agent_id == "a"


def test_the_margin_is_the_tightest_measured_term_in_percent_of_its_limit() -> None:
    # p99 800 of 2000: 60 % left; error rate 0.04 of 0.05: 20 % left. The tighter one counts.
    assert decide("a", START, _snap("a", errors=0.04), TERMS, 300).margin_pct == 20.0
    assert decide("a", START, _snap("a", p99=3000), TERMS, 300).margin_pct == -50.0
    assert decide("a", START, _snap("a", p99=None, errors=None), TERMS, 300).margin_pct is None
    assert decide("a", START, None, TERMS, 300).margin_pct is None


# ------------------------------------------------------------------------------ contracts


def test_templates_validated_at_load_and_unknown_ones_refused(tmp_path: Path, world: World) -> None:
    assert template_terms(world.policy, "premium-support")["p99_latency_ms"] == 500
    assert template_terms(world.policy, "standard-support")["max_cost_per_task"] == "0.05"
    with pytest.raises(UnknownTemplate):
        template_terms(world.policy, "gold")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "extends: "
        + str(Path(__file__).resolve().parents[2] / "config/defaults/policy.yaml")
        + "\nsla_templates:\n  gold:\n    p99_latency_ms: -1\n"
        "    uptime_pct: '99'\n    accuracy_pct: '90'\n"
        "    max_cost_per_task: '0.1'\n    review_days: 7\n"
    )
    with pytest.raises(ConfigError, match="sla_templates.gold.p99_latency_ms"):
        load_policy(bad)


# ------------------------------------------------------------------------------ sweeps and batches


def test_a_sweep_batches_active_agents_and_agents_with_open_episodes(world: World) -> None:
    w = world
    w.settings = w.settings.model_copy(update={"batch_size": 4})
    active = w.add_agents(10)
    paused = w.add_agents(2, prefix="pz", status=AgentStatus.PAUSED)
    w.add_agents(3, prefix="gone", status=AgentStatus.RETIRED)
    with write_session(w.sessions) as s:
        s.add(
            SlaEpisode(
                episode_id="e" * 32,
                agent_id=paused[0],
                fleet="demo",
                state="open",
                open_agent=paused[0],
                breached_terms=["uptime_pct"],
                opened_at=START,
                opened_by="sweep",
                last_breach_at=START,
                compliant_streak=0,
            )
        )
    plan = service.plan_sweep(w.sla())
    assert plan is not None and plan.total == 11 and [len(b) for b in plan.batches] == [4, 4, 3]
    assert sorted(a for b in plan.batches for a in b) == sorted([*active, paused[0]])
    assert service.plan_sweep(w.sla(), guard_s=60) is not None
    assert service.plan_sweep(w.sla(), guard_s=60) is None  # a second beat within the interval


def test_each_agent_is_its_own_unit_of_failure(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world
    agents = w.add_agents(6)
    for a in agents[:3]:
        w.gateway.breach(a)
    w.gateway.down.add(agents[3])  # its check fails: unknown, nothing changes
    real = service.apply_sample

    def boom(sessions: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        if sample.agent_id == agents[1]:
            raise RuntimeError("disk on fire")
        return real(sessions, sample, *args, **kwargs)

    monkeypatch.setattr(service, "apply_sample", boom)
    plan = service.plan_sweep(w.sla())
    assert plan is not None
    result = service.check_batch(w.sla(), agents, sweep_id=plan.sweep_id)
    assert result.failed == [agents[1]]
    assert result.verdicts == {"breach": 3, "compliant": 2, "unknown": 1}
    assert result.transitions["opened"] == 2 and result.dispatched == 2
    progress = service.sweep_progress(w.redis, plan.sweep_id)
    assert (
        progress is not None
        and progress["done"] == 6
        and progress["failed"] == 1
        and "duration_s" in progress
    )
    assert service.last_sample(w.redis, agents[3])["verdict"] == "unknown"  # type: ignore[index]


def test_only_a_fresh_snapshot_decides(world: World) -> None:
    w = world
    [a, b, c] = w.add_agents(3)
    w.gateway.down.add(c)  # the metrics sweep could not reach it
    deps = w.sla()
    now = w.clock.now().timestamp()
    write_snapshots(
        w.redis,
        [
            Snapshot(a, now - 30, Health.CRITICAL, latency_p99=9000.0),
            # Breaching, but read longer ago than sla.snapshot_max_age_s.
            Snapshot(b, now - 600, Health.CRITICAL, latency_p99=9000.0),
        ],
    )
    result = service.check_batch(deps, [a, b, c])
    assert result.verdicts == {"breach": 1, "unknown": 2}
    assert result.transitions["opened"] == 1 and set(result.episodes) == {a}
    assert service.last_sample(w.redis, a)["source"] == "snapshot"  # type: ignore[index]
    assert service.last_sample(w.redis, a)["terms"] == "p99_latency_ms"  # type: ignore[index]
    assert service.last_sample(w.redis, b)["source"] == "none"  # type: ignore[index]
    assert service.last_sample(w.redis, c)["verdict"] == "unknown"  # type: ignore[index]


def test_agents_that_left_the_fleet_have_their_episodes_closed(world: World) -> None:
    w = world
    [a] = w.add_agents(1)
    w.gateway.breach(a)
    service.check_batch(w.sla(), [a])
    with write_session(w.sessions) as s:
        agent = s.get(Agent, a)
        assert agent is not None
        agent.status = AgentStatus.RETIRED
    result = service.check_batch(w.sla(), [a])
    assert result.transitions == {"closed": 1}
    episode_id = result.episodes[a]
    assert get_episode(w.sessions, episode_id).close_reason == "agent retired"
    assert (
        close_episode(w.sessions, episode_id, "again", w.clock.now()).transition.value
        == "unchanged"
    )
    with pytest.raises(EpisodeClosed):
        service.acknowledge_episode(w.sessions, w.policy, w.clock, episode_id, "alice")


# ------------------------------------------------------------------ budgets and burn rates


def test_the_budget_is_half_a_percent_of_an_explicit_window() -> None:
    thirty = compute_budget([], START, ErrorBudgetPolicy(slo_window_days=30))
    month = compute_budget([], START, ErrorBudgetPolicy(slo_window_days=30.44))
    assert round(thirty.allowed_s / 60) == 216 and round(month.allowed_s / 60) == 219
    assert thirty.remaining == 1.0 and thirty.time_to_exhaustion_s is None
    fleet = compute_budget([], START, ErrorBudgetPolicy(), agents=10)
    assert round(fleet.allowed_s / 60) == 2160


def test_budget_consumed_remaining_and_time_to_exhaustion() -> None:
    policy = ErrorBudgetPolicy(slo_window_days=30, exhaustion_rate_window_s=3600)
    # 100 min of violation a week ago, and 30 min still going on right now.
    intervals = [
        (START - timedelta(days=7), START - timedelta(days=7) + timedelta(minutes=100)),
        (START - timedelta(minutes=30), None),
    ]
    b = compute_budget(intervals, START, policy)
    assert round(b.consumed_s / 60) == 130
    assert b.remaining == pytest.approx(1 - 130 / 216, abs=1e-9)
    # Burning half of every hour lately: the 86 minutes left last 172 minutes.
    assert b.time_to_exhaustion_s == pytest.approx(86 * 60 / 0.5, rel=1e-6)
    spent = compute_budget([(START - timedelta(minutes=300), None)], START, policy)
    assert spent.remaining < 0 and spent.time_to_exhaustion_s == 0.0
    # Episodes older than the window no longer count.
    old = compute_budget([(START - timedelta(days=40), START - timedelta(days=39))], START, policy)
    assert old.consumed_s == 0


def test_multi_window_burn_alerts_need_both_windows_over_the_factor() -> None:
    policy = load_policy(
        Path(__file__).resolve().parents[2] / "config/defaults/policy.yaml"
    ).error_budget
    assert [rule_name(a) for a in policy.burn_alerts] == [
        "14.4x-1h-5m",
        "6x-6h-30m",
        "3x-1d-2h",
        "1x-3d-6h",
    ]
    # 6 minutes in violation, still going: 14.4x over 1 h needs 4.32 min; 5 min window all burning.
    fresh = {
        s.rule: s for s in evaluate_burn([(START - timedelta(minutes=6), None)], START, policy)
    }
    assert fresh["14.4x-1h-5m"].firing and fresh["14.4x-1h-5m"].severity == "page"
    assert not fresh["6x-6h-30m"].firing  # 6 min of 6 h is 1.67 % = 3.3x
    # The same 6 minutes, ended 10 minutes ago: the long window still burns, the short one stopped.
    ended = {
        s.rule: s
        for s in evaluate_burn(
            [(START - timedelta(minutes=16), START - timedelta(minutes=10))], START, policy
        )
    }
    assert ended["14.4x-1h-5m"].long_rate >= 14.4 and ended["14.4x-1h-5m"].short_rate == 0
    assert not ended["14.4x-1h-5m"].firing
    # A slow burn: 40 % of the last day → 3x (ticket) fires on 1 d and 2 h, not the page rules.
    slow = [
        (START - timedelta(hours=h), START - timedelta(hours=h) + timedelta(minutes=24))
        for h in range(1, 25)
    ]
    slow.append((START - timedelta(minutes=50), None))
    states = {s.rule: s for s in evaluate_burn(slow, START, policy)}
    assert states["3x-1d-2h"].firing and states["3x-1d-2h"].severity == "ticket"
    assert burn_rate([(START - timedelta(hours=1), None)], START, 3600, 0.005) == pytest.approx(200)


def test_burn_alerts_fire_once_notify_for_fleets_and_resolve(world: World) -> None:
    w = world
    agents = w.add_agents(4)
    for a in agents[:2]:
        w.gateway.breach(a)
    service.check_batch(w.sla(), agents)
    deps = AlertDeps(w.sessions, w.policy, w.clock, w.client)
    w.clock.advance(6 * 60)
    first = evaluate_burn_alerts(deps)
    # Two of four agents in breach for 6 min. Each: 6 of 60 min = 20x over 1 h, 200x over 5 min:
    # page. The fleet: 12 of 240 agent-minutes = 10x over 1 h: not yet.
    assert {("agent:" + a, "14.4x-1h-5m") for a in agents[:2]} <= set(first.fired)
    assert ("fleet:demo", "14.4x-1h-5m") not in first.fired
    w.clock.advance(
        3 * 60
    )  # 9 min: 18 of 240 agent-minutes = 7.5 % = 15x over 1 h, 50 % over 5 min = 100x
    second = evaluate_burn_alerts(deps)
    assert second.fired == [("fleet:demo", "14.4x-1h-5m")]
    pages = [m for m in w.gateway.messages if m["subject"].startswith("[page]")]
    assert (
        len(pages) == 1
        and pages[0]["metadata"]["priority"] == "urgent"
        and "fleet:demo" in pages[0]["subject"]
    )
    assert evaluate_burn_alerts(deps).fired == []  # fires once
    for a in agents[:2]:
        w.gateway.comply(a)
    service.check_batch(w.sla(), agents)
    service.check_batch(w.sla(), agents)
    w.clock.advance(10 * 60)
    later = evaluate_burn_alerts(deps)
    assert ("fleet:demo", "14.4x-1h-5m") in later.resolved
    with w.sessions() as s:
        rows = s.scalars(select(SlaBurnAlert).where(SlaBurnAlert.rule == "14.4x-1h-5m")).all()
        assert all(r.resolved_at is not None and r.open_key is None for r in rows)
    assert {"sla_burn_alert_fired", "sla_burn_alert_resolved"} <= {e.action for e in w.events}


# ------------------------------------------------------------------------------ what people see


def test_status_reports_and_prometheus(world: World) -> None:
    w = world
    agents = w.add_agents(3)
    w.gateway.breach(agents[0])
    service.check_batch(w.sla(), agents)
    w.clock.advance(16 * 60)
    evaluate(w.engine())
    w.run_sent()
    report = fleet_report(w.sessions, w.policy, w.clock.now(), r=w.redis)
    [episode] = report["open_episodes"]
    assert (
        episode["agent_id"] == agents[0]
        and episode["tier_reached"] == 3
        and episode["duration_s"] == 16 * 60
    )
    assert [e["queue"] for e in episode["escalations"]] == [
        "escalation.tier1",
        "escalation.tier2",
        "escalation.tier3",
    ]
    budget = report["budgets"]["demo"]
    assert (
        budget["agents"] == 3
        and budget["consumed_minutes"] == 16
        and budget["allowed_minutes"] == 648
    )
    one = agent_report(w.sessions, w.policy, w.clock.now(), agents[0], r=w.redis)
    assert (
        one is not None
        and one["budget"]["consumed_minutes"] == 16
        and one["traffic_weight"] == "0.5"
    )
    assert one["last_sample"]["verdict"] == "breach" and one["terms"]["p99_latency_ms"] == 2000
    assert agent_report(w.sessions, w.policy, w.clock.now(), "nobody") is None

    registry = CollectorRegistry()
    register_sla_collector(lambda: w.sessions, lambda: w.policy, registry, clock=w.clock)
    assert (
        register_sla_collector(lambda: w.sessions, lambda: w.policy, registry) is not None
    )  # once only
    text = generate_latest(registry).decode()
    assert 'fleet_sla_error_budget_remaining_ratio{agent="",fleet="demo",scope="fleet"}' in text
    assert (
        "fleet_sla_error_budget_consumed_seconds"
        f'{{agent="{agents[0]}",fleet="demo",scope="agent"}} 960.0' in text
    )
    assert 'fleet_sla_burn_rate{agent="",fleet="demo",scope="fleet",window="5m"}' in text
    assert 'fleet_sla_open_episodes{fleet="demo"} 1.0' in text
    assert 'fleet_sla_escalations{status="done",tier="3"} 1.0' in text


def test_the_sweep_of_many_agents_stays_a_handful_of_messages(world: World) -> None:
    w = world
    agents = w.add_agents(1000)
    plan = service.plan_sweep(w.sla())
    assert plan is not None and len(plan.batches) == 4  # 250 per message
    started = time.perf_counter()
    for batch in plan.batches:
        service.check_batch(w.sla(), batch, sweep_id=plan.sweep_id)
    assert time.perf_counter() - started < 10
    progress = service.sweep_progress(w.redis)
    assert (
        progress is not None and progress["done"] == 1000 and progress["sweep_id"] == plan.sweep_id
    )
    assert len(agents) == 1000


def test_policy_numbers_live_in_the_policy(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path, escalation__traffic_cut_fraction=0.25, error_budget__slo_window_days=7
    )
    assert (
        policy.escalation.traffic_cut_fraction == 0.25 and policy.error_budget.slo_window_days == 7
    )
    with pytest.raises(ConfigError):
        write_policy(tmp_path, escalation__ack_pauses_tiers=[5])


def test_an_agent_serving_a_counterparty_names_it_for_the_dispute(world: World) -> None:
    w = world
    [agent] = w.add_agents(1)
    with write_session(w.sessions) as s:
        row = s.get(Agent, agent)
        assert row is not None
        row.extra = {"counterparty": "buyer-0009"}
    w.gateway.breach(agent)
    result = service.check_batch(w.sla(), [agent])
    assert get_episode(w.sessions, result.episodes[agent]).counterparty == "buyer-0009"
