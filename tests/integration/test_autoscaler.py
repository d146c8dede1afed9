"""The autoscaler with real provisioning and audit workers on the movable clock.

Two segments of five agents each; one is switched to enforce through its approval, the
other stays in observe. The test drives their queue depth (the in-flight counters
routing keeps per agent) up and down, moves every process's clock past the cooldown
(the settings' offset file) and sends the decision pass as beat would. It shows:
scale-up by 5 once, nothing during the cooldown, a scale-up cut at max, scale-down by 2
with drained retirements down to min and no further, and in observe mode the same
decisions logged and nothing provisioned or retired.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import func, select

from config.settings import DEFAULT_POLICY_FILE
from fleet.approvals import Approvals
from fleet.audit.models import AuditEntry
from fleet.clock import OffsetFileClock, SystemClock
from fleet.hotstate import connect, inflight_key
from fleet.monitoring.snapshot import Health, Snapshot, write_snapshots
from fleet.provisioning.pipeline import job_progress
from fleet.provisioning.records import ProvisioningJob
from fleet.scaling import enforce
from fleet.scaling.autoscaler import decisions, job_id_for
from fleet.scaling.models import ScalingDecision, SegmentScaling
from fleet.storage.db import engine_for, session_factory
from fleet.storage.records import Agent
from stack.local import Stack, local_stack
from stack.parts import wait_until
from tests.support.workload import fleet_manifest
from workers.queues import TaskName

pytestmark = pytest.mark.integration

TREASURY = "fleet-treasury"
AUDITED = (
    "autoscale_scale_up",
    "autoscale_provision",
    "autoscale_scale_down",
    "retire_agent",
    "autoscale_enforce",
)
MAX_AGENTS = 12  # the policy's max, lowered so the cap is reached by a real scale-up


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("autoscale")
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    policy["scaling"]["max_agents"] = MAX_AGENTS
    policy_file = base / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    with local_stack(
        base,
        latency_ms=1,
        jitter_ms=0,
        policy_file=policy_file,
        clock_offset_file=base / "clock-offset",
    ) as st:
        made = httpx.post(f"{st.sandbox().url}/v1/register", json={"agent_id": TREASURY})
        assert made.status_code == 201, made.text
        st.start_worker(["provisioning"], concurrency=8, pool="threads", name="provisioning")
        st.start_worker(["audit"], concurrency=1, name="audit")
        yield st


class World:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.app = stack.celery()
        self.sessions = session_factory(engine_for(stack.settings.sqlalchemy_url))
        self.redis = connect(stack.settings.redis_url)
        path = stack.settings.clock_offset_file
        assert path is not None
        self.clock = OffsetFileClock(Path(path))
        self.cooldown_s = stack.settings.policy.scaling.cooldown_s

    def agents(self, segment: str, status: str = "active") -> list[str]:
        with self.sessions() as s:
            return sorted(
                s.scalars(
                    select(Agent.agent_id).where(Agent.id_prefix == segment, Agent.status == status)
                )
            )

    def load(self, segment: str, per_agent: int) -> None:
        """Queue depth: every active agent of the segment has ``per_agent`` tasks in flight,
        and a fresh healthy snapshot (as the heartbeat ingest writes it)."""
        agents = self.agents(segment)
        now = self.clock.now().timestamp()
        write_snapshots(self.redis, [Snapshot(a, now, Health.HEALTHY) for a in agents])
        for a in agents:
            self.redis.set(inflight_key(a), per_agent)

    def evaluate(self) -> dict[str, dict[str, Any]]:
        """One decision pass, as beat sends it; returns this pass's decision per segment."""
        with self.sessions() as s:
            before = int(s.scalar(select(func.count()).select_from(ScalingDecision)) or 0)
        self.app.send_task(TaskName.SCALING_EVALUATE)

        def logged() -> int | None:
            with self.sessions() as s:
                n = int(s.scalar(select(func.count()).select_from(ScalingDecision)) or 0)
            return n if n >= before + 2 else None

        wait_until(logged, timeout_s=30)
        latest: dict[str, dict[str, Any]] = {}
        for d in reversed(decisions(self.sessions, limit=2)):
            latest[d["segment"]] = d
        return latest

    def jobs(self) -> list[str]:
        with self.sessions() as s:
            return list(s.scalars(select(ProvisioningJob.job_id)))

    def mode(self, segment: str) -> str | None:
        with self.sessions() as s:
            row = s.get(SegmentScaling, segment)
            return row.mode if row else None


def test_the_autoscaler_scales_within_its_bounds_and_observe_mode_only_logs(stack: Stack) -> None:
    w = World(stack)
    fleet = f"as{uuid.uuid4().hex[:4]}"
    job = uuid.uuid4().hex
    w.app.send_task(
        TaskName.PROVISION_FLEET,
        kwargs={"manifest": fleet_manifest(10, fleet=fleet, groups=2), "job_id": job},
    )
    wait_until(
        lambda: (p := job_progress(w.sessions, job)) is not None and p.state == "done",
        timeout_s=90,
    )
    enforced, observed = f"{fleet}-seg0", f"{fleet}-seg1"
    assert len(w.agents(enforced)) == 5 and len(w.agents(observed)) == 5

    # Enforce is HIGH: nothing changes until someone other than the requester approves.
    approvals = Approvals(
        w.sessions, stack.settings.policy.approvals, clock=SystemClock(), emit=lambda e: None
    )
    gate = enforce.request_enforce(
        approvals, w.sessions, enforced, "alice", reason="load test of the autoscaler"
    )
    assert not gate.may_run and gate.request_id
    assert w.mode(enforced) in (None, "observe")
    approvals.approve(gate.request_id, "bob")
    w.app.send_task(TaskName.AUDIT_APPROVALS_SWEEP)
    wait_until(lambda: w.mode(enforced) == "enforce", timeout_s=30)

    # 12 pending per healthy agent > 10: scale up by 5, in both modes.
    w.load(enforced, 12)
    w.load(observed, 12)
    first = w.evaluate()
    assert (first[enforced]["action"], first[enforced]["count"]) == ("scale_up", 5)
    assert (first[observed]["action"], first[observed]["count"]) == ("scale_up", 5)
    assert first[enforced]["mode"] == "enforce" and first[observed]["mode"] == "observe"
    assert first[enforced]["inputs"]["pending"] == 60
    assert first[enforced]["inputs"]["healthy"] == 5
    assert first[enforced]["inputs"]["size"] == 5
    wait_until(lambda: len(w.agents(enforced)) == 10, timeout_s=90)
    up_job = job_id_for(first[enforced]["decision_id"])
    assert up_job in w.jobs()

    # Within the cooldown: hold, whatever the load; nothing provisioned.
    w.load(enforced, 12)
    w.clock.advance(w.cooldown_s / 2)
    during = w.evaluate()
    for seg in (enforced, observed):
        assert during[seg]["action"] == "hold" and "cooldown" in during[seg]["reason"], during
    assert len(w.agents(enforced)) == 10 and len(w.agents(enforced, "provisioning")) == 0

    # Past it, still loaded: the step is cut at max (12), then max holds.
    w.clock.advance(w.cooldown_s / 2 + 1)
    w.load(enforced, 12)
    w.load(observed, 12)
    capped = w.evaluate()
    assert (capped[enforced]["action"], capped[enforced]["count"]) == ("scale_up", 2)
    assert (capped[observed]["action"], capped[observed]["count"]) == ("scale_up", 5)
    wait_until(lambda: len(w.agents(enforced)) == MAX_AGENTS, timeout_s=90)
    w.clock.advance(w.cooldown_s + 1)
    w.load(enforced, 12)
    at_max = w.evaluate()
    assert at_max[enforced]["action"] == "hold" and "maximum" in at_max[enforced]["reason"]
    assert len(w.agents(enforced)) == MAX_AGENTS

    # Idle: scale down by 2 per cooldown, each retirement drained, down to min (5), not below.
    sizes, retired_total = [], 0
    for _ in range(6):
        w.clock.advance(w.cooldown_s + 1)
        w.load(enforced, 0)
        w.load(observed, 0)
        before = w.agents(enforced)
        d = w.evaluate()
        assert d[observed]["action"] == "hold" and "minimum" in d[observed]["reason"]
        if d[enforced]["action"] == "hold":
            assert "minimum" in d[enforced]["reason"], d[enforced]
            break
        assert d[enforced]["action"] == "scale_down"
        assert d[enforced]["count"] == min(2, len(before) - 5)
        chosen = d[enforced]["acted"]["retire"]
        # All healthy and idle: the newest go first.
        newest = sorted(before, key=lambda a: int(a.rsplit("-", 2)[1]))[-len(chosen) :]
        assert sorted(chosen) == sorted(newest)
        retired_total += len(chosen)
        wait_until(
            lambda n=retired_total: len(w.agents(enforced, "retired")) == n,  # type: ignore[misc]
            timeout_s=90,
        )
        with w.sessions() as s:
            for a in chosen:
                facts = s.get(Agent, a).extra["retirement"]  # type: ignore[union-attr]
                assert facts["drained"] is True and facts["abandoned_in_flight"] == 0
                assert d[enforced]["decision_id"] in facts["reason"]
        sizes.append(len(w.agents(enforced)))
    assert sizes == [10, 8, 6, 5]
    assert len(w.agents(enforced)) == 5

    # Observe: the same decisions logged, and nothing done.
    assert len(w.agents(observed)) == 5
    assert not w.agents(observed, "retired") and not w.agents(observed, "retiring")
    scale_jobs = sorted(j for j in w.jobs() if j.startswith("autoscale-"))
    assert scale_jobs == sorted([up_job, job_id_for(capped[enforced]["decision_id"])])

    # Every action is in the audit log: the decisions, the provisioning, each retirement.
    def audited() -> dict[tuple[str, str], int] | None:
        with w.sessions() as s:
            rows = s.execute(
                select(AuditEntry.action, AuditEntry.subject, func.count())
                .where(AuditEntry.action.in_(AUDITED))
                .group_by(AuditEntry.action, AuditEntry.subject)
            ).all()
        seen: dict[tuple[str, str], int] = {}
        for action, subject, n in rows:
            key = (action, subject if subject in (enforced, observed) else "agent")
            seen[key] = seen.get(key, 0) + n
        wanted = {
            ("autoscale_scale_up", enforced): 2,
            ("autoscale_scale_up", observed): 3,
            ("autoscale_provision", enforced): 2,
            ("autoscale_scale_down", enforced): 4,
            ("retire_agent", "agent"): 7,
            ("autoscale_enforce", enforced): 1,
        }
        return seen if all(seen.get(k) == v for k, v in wanted.items()) else None

    wait_until(audited, timeout_s=30)
    logged = decisions(w.sessions, segment=observed, limit=100)
    assert all(d["acted"] in ({}, {"observe": "decided and logged; nothing done"}) for d in logged)
    # Its size stays 5, so after the first two passes it keeps asking for more, then holds
    # at min once idle: decided and logged every time, acted on never.
    actions = [(d["action"], d["count"]) for d in reversed(logged)]
    assert actions[:4] == [("scale_up", 5), ("hold", 0), ("scale_up", 5), ("scale_up", 5)]
    assert actions[4:] and all(a == ("hold", 0) for a in actions[4:])
