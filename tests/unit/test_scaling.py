"""The autoscaler's decision, its pass in process (fakeredis, SQLite), its API and commands."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from config.policy import ScalingPolicy
from fleet.clock import ManualClock, OffsetFileClock, SystemClock, clock_from
from fleet.hotstate import inflight_key
from fleet.monitoring.snapshot import Health, Snapshot, write_snapshots
from fleet.scaling import autoscaler, enforce
from fleet.scaling.decide import Action, Inputs, decide
from fleet.scaling.models import SegmentScaling
from tests.conftest import RecordingRuntime
from tests.support.fleet_rows import insert_agents
from workers.queues import FleetQueue, TaskName, queue_for
from workers.schedule import build_beat_schedule

POLICY = ScalingPolicy()
AUTH = {"Authorization": "Bearer fleet-demo-token"}
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def inputs(pending: int, healthy: int, size: int, **kw: Any) -> Inputs:
    return Inputs(segment="seg", pending=pending, healthy=healthy, size=size, now=NOW, **kw)


# ---------------------------------------------------------------- decide()


@pytest.mark.parametrize(
    ("pending", "healthy", "size", "action", "count", "why"),
    [
        (110, 10, 10, Action.SCALE_UP, 5, "provision 5"),  # 11 per agent > 10
        (100, 10, 10, Action.HOLD, 0, "within"),  # exactly 10 is not above
        (110, 10, 97, Action.SCALE_UP, 3, "provision 3"),  # cut at max 100
        (1100, 100, 100, Action.HOLD, 0, "maximum"),
        (5, 10, 10, Action.SCALE_DOWN, 2, "retire 2"),  # 0.5 per agent < 1
        (10, 10, 10, Action.HOLD, 0, "within"),  # exactly 1 is not below
        (0, 6, 6, Action.SCALE_DOWN, 1, "retire 1"),  # cut at min 5
        (0, 5, 5, Action.HOLD, 0, "minimum"),
        (3, 0, 5, Action.SCALE_UP, 5, "inf"),  # work and no healthy agent
        (0, 0, 5, Action.HOLD, 0, "no load"),
        (50, 10, 104, Action.SCALE_DOWN, 2, "above max"),
        (0, 3, 3, Action.SCALE_UP, 2, "below min 5: provision 2"),  # a small group
        (0, 0, 0, Action.SCALE_UP, 5, "below min 5: provision 5"),  # a step at a time
    ],
)
def test_decide_follows_the_thresholds_and_stays_within_min_and_max(
    pending: int, healthy: int, size: int, action: Action, count: int, why: str
) -> None:
    d = decide(POLICY, inputs(pending, healthy, size))
    assert (d.action, d.count) == (action, count), d.reason
    assert why in d.reason
    assert d.inputs["pending"] == pending and d.inputs["healthy"] == healthy
    assert d.inputs["size"] == size and d.inputs["min_agents"] == 5


def test_the_cooldown_holds_any_action_and_ends_on_time() -> None:
    until = NOW + timedelta(seconds=POLICY.cooldown_s)
    held = decide(POLICY, inputs(500, 10, 10, cooldown_until=until))
    assert held.action is Action.HOLD and "cooldown" in held.reason
    assert held.inputs["cooldown_until"] == until.isoformat()
    after = Inputs("seg", 500, 10, 10, now=until, cooldown_until=until)
    assert decide(POLICY, after).action is Action.SCALE_UP


def test_burn_over_the_limit_scales_down_on_cost_before_the_load_counts() -> None:
    busy = inputs(500, 10, 10, burn=Decimal("2000.01"), burn_limit=Decimal("2000.00"))
    d = decide(POLICY, busy)
    assert (d.action, d.count) == (Action.COST_SCALE_DOWN, 2)
    assert d.inputs["burn"] == "2000.01" and d.inputs["burn_limit"] == "2000.00"
    at_limit = inputs(500, 10, 10, burn=Decimal("2000.00"), burn_limit=Decimal("2000.00"))
    assert decide(POLICY, at_limit).action is Action.SCALE_UP
    at_min = inputs(0, 5, 5, burn=Decimal("3000"), burn_limit=Decimal("2000"))
    assert decide(POLICY, at_min).action is Action.HOLD
    # Over the limit nothing is provisioned, not even to reach the minimum.
    below_min = inputs(0, 3, 3, burn=Decimal("3000"), burn_limit=Decimal("2000"))
    held = decide(POLICY, below_min)
    assert held.action is Action.HOLD and "below its minimum" in held.reason


def test_the_numbers_come_from_the_policy() -> None:
    policy = ScalingPolicy(scale_up_queue_per_agent=2, scale_up_step=1, max_agents=7)
    assert (decide(policy, inputs(30, 10, 6)).action, decide(policy, inputs(30, 10, 6)).count) == (
        Action.SCALE_UP,
        1,
    )
    with pytest.raises(ValidationError, match="min_agents"):
        ScalingPolicy(min_agents=10, max_agents=5)
    with pytest.raises(ValidationError, match="scale_down_queue_per_agent"):
        ScalingPolicy(scale_down_queue_per_agent=20)


# ---------------------------------------------------------------- wiring


def test_the_pass_has_its_beat_entry_and_runs_on_the_provisioning_queue(
    runtime: RecordingRuntime,
) -> None:
    entry = build_beat_schedule(runtime.settings)["provisioning-autoscale"]
    assert entry["task"] == TaskName.SCALING_EVALUATE
    assert entry["schedule"] == runtime.settings.policy.scaling.evaluate_every_s == 60
    for name in (
        TaskName.SCALING_EVALUATE,
        TaskName.SCALING_SCALE_UP,
        TaskName.SCALING_RETIRE,
        TaskName.SCALING_ENFORCE,
    ):
        assert queue_for(name) is FleetQueue.PROVISIONING
    assert autoscaler.SCALE_UP_TASK == TaskName.SCALING_SCALE_UP
    assert autoscaler.RETIRE_TASK == TaskName.SCALING_RETIRE
    assert enforce.TASK == TaskName.SCALING_ENFORCE
    assert runtime.settings.policy.approvals.matrix[enforce.ACTION].value == "HIGH"


def test_an_offset_file_moves_every_clock_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    mover, reader = OffsetFileClock(path), OffsetFileClock(path)
    start = reader.now()
    mover.advance(600)
    assert timedelta(seconds=599) < reader.now() - start < timedelta(seconds=660)
    assert isinstance(clock_from(None), SystemClock)
    assert isinstance(clock_from(path), OffsetFileClock)


# ---------------------------------------------------------------- the pass in process


SEG = "segA"
AGENTS = [f"{SEG}-{i:04d}-0000000{i}" for i in range(1, 7)]


@pytest.fixture
def world(runtime: RecordingRuntime) -> dict[str, Any]:
    r = fakeredis.FakeRedis(decode_responses=True)
    runtime.redis = r
    insert_agents(runtime.sessions, AGENTS, fleet="demo", policy=runtime.settings.policy)
    clock = ManualClock(NOW)
    deps = autoscaler.ScalingDeps(
        sessions=runtime.sessions,
        redis=r,
        policy=runtime.settings.policy,
        clock=clock,
        send=runtime.sent.extend,
        audit=lambda **kw: runtime.events.append(kw),  # type: ignore[arg-type]
        lock=runtime.lock,
    )
    runtime.lock = lambda name, ttl: _no_lock()  # type: ignore[method-assign]
    deps.lock = runtime.lock
    return {"deps": deps, "r": r, "clock": clock, "rt": runtime}


class _Lease:
    def renew(self) -> None: ...


class _NoLock:
    def __enter__(self) -> _Lease:
        return _Lease()

    def __exit__(self, *a: object) -> None: ...


def _no_lock() -> Any:
    return _NoLock()


def _load(world: dict[str, Any], per_agent: int, sick: tuple[str, ...] = ()) -> None:
    now = world["clock"].now().timestamp()
    snaps = [Snapshot(a, now, Health.CRITICAL if a in sick else Health.HEALTHY) for a in AGENTS]
    write_snapshots(world["r"], snaps)
    for a in AGENTS:
        world["r"].set(inflight_key(a), per_agent)


def test_observe_mode_logs_the_decision_and_sends_nothing(world: dict[str, Any]) -> None:
    _load(world, 12)
    [d] = autoscaler.evaluate(world["deps"])
    assert (d["mode"], d["action"], d["count"]) == ("observe", "scale_up", 5)
    assert d["inputs"]["pending"] == 72 and d["inputs"]["healthy"] == 6
    assert world["rt"].sent == []
    assert d["acted"] == {"observe": "decided and logged; nothing done"}
    # The cooldown runs in observe too, so both modes decide alike.
    [again] = autoscaler.evaluate(world["deps"])
    assert again["action"] == "hold" and "cooldown" in again["reason"]
    assert [x["action"] for x in autoscaler.decisions(world["rt"].sessions)] == [
        "hold",
        "scale_up",
    ]
    [view] = autoscaler.segment_views(world["rt"].sessions)
    assert view["mode"] == "observe" and view["last_action"] == "scale_up"
    assert view["cooldown_until"] == (NOW + timedelta(seconds=600)).isoformat()


def test_enforce_mode_sends_the_actions_and_retires_the_least_useful(
    world: dict[str, Any],
) -> None:
    rt = world["rt"]
    with rt.sessions.begin() as s:
        s.add(SegmentScaling(segment=SEG, fleet="demo", mode="enforce"))
    _load(world, 12)
    [up] = autoscaler.evaluate(world["deps"])
    assert rt.sent == [
        (
            TaskName.SCALING_SCALE_UP,
            {"segment": SEG, "count": 5, "decision_id": up["decision_id"]},
        )
    ]
    assert [e["action"] for e in rt.events] == ["autoscale_scale_up"]
    rt.sent.clear()
    world["clock"].advance(601)
    _load(world, 0, sick=(AGENTS[0],))
    world["r"].set(inflight_key(AGENTS[5]), 1)
    [down] = autoscaler.evaluate(world["deps"])
    assert (down["action"], down["count"]) == ("scale_down", 1)  # 6 agents, min 5
    # The unhealthy one first, before the newest idle ones.
    assert down["acted"]["retire"] == [AGENTS[0]]
    assert rt.sent == [
        (TaskName.SCALING_RETIRE, {"agent_id": AGENTS[0], "decision_id": down["decision_id"]})
    ]
    reason = autoscaler.retirement_reason(world["deps"], AGENTS[0], down["decision_id"])
    assert down["decision_id"] in reason
    with pytest.raises(autoscaler.ScalingError, match="did not choose"):
        autoscaler.retirement_reason(world["deps"], AGENTS[1], down["decision_id"])
    with pytest.raises(autoscaler.ScalingError, match="did not choose"):
        autoscaler.retirement_reason(world["deps"], AGENTS[0], up["decision_id"])


def test_least_useful_orders_unhealthy_then_idle_then_newest() -> None:
    agents = [
        autoscaler.SegmentAgent("s-0001-a", "active", 0, True),
        autoscaler.SegmentAgent("s-0002-b", "active", 3, True),
        autoscaler.SegmentAgent("s-0003-c", "active", 0, True),
        autoscaler.SegmentAgent("s-0004-d", "active", 9, False),
        autoscaler.SegmentAgent("s-0005-e", "provisioning", 0, False),
    ]
    assert autoscaler.least_useful(agents, 3) == ["s-0004-d", "s-0003-c", "s-0001-a"]


# ---------------------------------------------------------------- API and CLI


def test_api_lists_decisions_and_segments_and_gates_enforce(world: dict[str, Any]) -> None:
    from web.app import create_api

    rt = world["rt"]
    _load(world, 12)
    autoscaler.evaluate(world["deps"])
    with TestClient(create_api(lambda: rt)) as client:
        assert client.get("/api/v1/scaling/decisions").status_code == 401
        got = client.get(f"/api/v1/scaling/decisions?segment={SEG}&limit=5", headers=AUTH)
        assert got.status_code == 200
        [d] = got.json()["decisions"]
        assert d["action"] == "scale_up" and d["inputs"]["pending"] == 72
        assert client.get("/api/v1/scaling/decisions?limit=0", headers=AUTH).status_code == 422
        [seg] = client.get("/api/v1/scaling/segments", headers=AUTH).json()["segments"]
        assert seg["segment"] == SEG and seg["mode"] == "observe" and seg["cooldown_until"]

        url = f"/api/v1/scaling/segments/{SEG}/mode"
        asked = client.post(url, headers=AUTH, json={"mode": "enforce", "reason": "ready"})
        assert asked.status_code == 202, asked.text
        body = asked.json()
        assert body["status"] == "awaiting-approval" and body["risk"] == "HIGH"
        assert body["approval_id"] and body["mode"] == "observe"
        with rt.sessions() as s:
            assert s.get(SegmentScaling, SEG).mode == "observe"  # type: ignore[union-attr]

        bad = client.post(url, headers=AUTH, json={"mode": "turbo", "reason": "x"})
        assert bad.status_code == 422 and "mode" in bad.text
        assert client.post(url, headers=AUTH, json={"mode": "observe"}).status_code == 422
        unknown = client.post(
            "/api/v1/scaling/segments/nosuch/mode",
            headers=AUTH,
            json={"mode": "observe", "reason": "x"},
        )
        assert unknown.status_code == 404 and "nosuch" in unknown.text

        # Approved (by someone else), the task sets enforce; observe needs nobody.
        rt.approvals.approve(body["approval_id"], "bob")
        assert enforce.apply_enforce(
            rt.approvals,
            rt.sessions,
            request_id=body["approval_id"],
            segment=SEG,
            requested_by="demo",
            reason="ready",
        )
        with rt.sessions() as s:
            assert s.get(SegmentScaling, SEG).mode == "enforce"  # type: ignore[union-attr]
        back = client.post(url, headers=AUTH, json={"mode": "observe", "reason": "enough"})
        assert back.status_code == 200 and back.json()["mode"] == "observe"
        with rt.sessions() as s:
            assert s.get(SegmentScaling, SEG).mode == "observe"  # type: ignore[union-attr]


def test_fleet_scale_commands(world: dict[str, Any]) -> None:
    from cli import main as cli_main

    _load(world, 0)
    autoscaler.evaluate(world["deps"])
    runner = CliRunner()
    status = runner.invoke(cli_main.main, ["scale", "status"])
    assert status.exit_code == 0, status.output
    assert SEG in status.output and "observe" in status.output
    listed = runner.invoke(cli_main.main, ["scale", "decisions", "--segment", SEG])
    assert (
        listed.exit_code == 0 and "scale_down 1" in listed.output and "pending 0" in listed.output
    )
    bad = runner.invoke(cli_main.main, ["scale", "decisions", "--segment", "no/such"])
    assert bad.exit_code != 0 and "not a segment" in bad.output
    asked = runner.invoke(
        cli_main.main, ["scale", "enforce", SEG, "--by", "alice", "--reason", "ready"]
    )
    assert asked.exit_code == 0 and "enforce requested (HIGH)" in asked.output
    back = runner.invoke(cli_main.main, ["scale", "observe", SEG, "--by", "alice", "--reason", "x"])
    assert back.exit_code == 0 and f"{SEG}: observe" in back.output
    missing = runner.invoke(
        cli_main.main, ["scale", "observe", "zzz", "--by", "a", "--reason", "x"]
    )
    assert missing.exit_code != 0 and "no segment" in missing.output
