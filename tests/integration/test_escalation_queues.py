"""Escalation on the real queue path: one worker process per tier queue, the sandbox over HTTP.

The sweep's reads, the engine and the compliance checks run in the test process on a
ManualClock (so 35 minutes take seconds): each check is preceded by a real poll of the agent's
self-reported metrics at the sandbox, whose simulated agent reports them by its behaviour
profile. Every tier's action is a real Celery message consumed by a real worker from its own
queue; what a tier did at the gateway is checked with the gateway's own reads.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import DEFAULT_POLICY_FILE
from fleet import audit
from fleet.approvals import Approvals
from fleet.approvals.release import release_agent
from fleet.clock import ManualClock, SystemClock
from fleet.escalation.engine import EngineDeps, evaluate
from fleet.gateway import Auth, StaticKeyRing, WalletFrozen
from fleet.gateway import operations as ops
from fleet.gateway.loop import LoopGatewayClient
from fleet.gateway.schemas import Message
from fleet.hotstate import connect
from fleet.monitoring.health import classify
from fleet.monitoring.snapshot import Snapshot, write_snapshots
from fleet.sla import service
from fleet.sla.models import ActionStatus, SlaEpisode, SlaEscalation
from fleet.storage.db import engine_for, session_factory, write_session
from fleet.storage.records import Agent, AgentStatus, SlaContract
from stack.local import Stack, local_stack
from stack.parts import wait_until
from tests.support.fleet_rows import seeded_ids

pytestmark = pytest.mark.integration

TIER_QUEUES = ["escalation.tier1", "escalation.tier2", "escalation.tier3", "escalation.tier4"]


class Hook:
    """The agent platform's remediation endpoint: records what it is asked."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.calls.append(json.loads(body))
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"restarted": true}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/remediate"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class System:
    stack: Stack
    sessions: sessionmaker[Session]
    gateway: LoopGatewayClient
    keys: StaticKeyRing
    hook: Hook
    clock: ManualClock = field(default_factory=lambda: ManualClock(datetime.now(UTC)))
    sent: list[tuple[datetime, str, int]] = field(default_factory=list)

    def send(self, messages: Any) -> None:
        self.sent += [
            (self.clock.now(), kwargs["episode_id"], kwargs["tier"]) for _, kwargs in messages
        ]
        app = self.stack.celery()
        with app.producer_or_acquire() as producer:
            for name, kwargs in messages:
                app.send_task(name, kwargs=kwargs, producer=producer, ignore_result=True)

    def snapshot(self, agents: list[str], at: datetime | None = None) -> None:
        """What monitoring at ``at`` leaves in Redis: each agent's latest self-reported p99
        and error rate at the gateway now, and its health class."""
        s = self.stack.settings
        when = (at or self.clock.now()).timestamp()
        snaps = []
        for agent in agents:
            p99, err = (
                self.gateway.run(ops.query_metrics(agent, name, limit=1, auth=Auth.ADMIN)).data
                for name in ("p99_latency_ms", "error_rate")
            )
            latency = float(p99[0].value) if p99 else None
            errors = float(err[0].value) if err else None
            health = classify(s.policy.health, errors, latency)
            snaps.append(
                Snapshot(agent, when, health, latency_p99=latency, error_rate=errors, fleet="itest")
            )
        write_snapshots(connect(s.redis_url), snaps)

    def report(self, agent: str, p99_ms: int, error_rate: Decimal) -> None:
        """The agent publishes its own figures at the gateway, with its own key."""
        accepted = self.gateway.run(
            ops.ingest_metrics(agent, {"p99_latency_ms": p99_ms, "error_rate": error_rate})
        )
        assert (accepted.accepted, accepted.rejected) == (2, 0)

    def breaks(self, agent: str) -> None:
        self.report(agent, 9000, Decimal("0.5"))  # far past the template's p99 of 2000 ms

    def recovers(self, agent: str) -> None:
        self.report(agent, 150, Decimal("0.01"))

    def messages(self, agent: str) -> list[Message]:
        """The operator's inbox as the gateway holds it, about this agent."""
        operator = self.stack.settings.gateway.operator_agent_id
        inbox = self.gateway.run(ops.get_messages(operator, limit=500, auth=Auth.ADMIN))
        return [m for m in inbox.messages if m.recipient == operator and agent in (m.body or "")]

    def deposit_refused(self, agent: str) -> bool:
        """The gateway's own word on the freeze: a top-up of a frozen wallet is refused."""
        try:
            self.gateway.run(ops.deposit(agent, "1.00", "freeze probe"))
        except WalletFrozen as exc:
            assert exc.status == 403
            return True
        return False

    def sla(self) -> service.SlaDeps:
        s = self.stack.settings
        return service.SlaDeps(
            self.sessions,
            connect(s.redis_url),
            s.policy,
            s.sla,
            self.clock,
            self.send,
        )

    def engine(self) -> EngineDeps:
        return EngineDeps(
            self.sessions,
            self.stack.settings.policy.escalation,
            self.clock,
            self.send,
            redis=connect(self.stack.settings.redis_url),
        )

    def agents(self, n: int, prefix: str) -> list[str]:
        seeded = self.stack.sandbox().seed(n, prefix=prefix, profile="healthy")
        ids = seeded_ids(seeded)
        for agent in seeded["agents"]:
            self.keys.add(agent["agent_id"], agent["api_key"])
        now = datetime.now(UTC)
        terms = self.stack.settings.policy.sla_templates["standard-support"].model_dump(mode="json")
        with write_session(self.sessions) as s:
            for a in ids:
                s.add(
                    Agent(
                        agent_id=a,
                        fleet="itest",
                        environment="test",
                        id_prefix=prefix,
                        tier="standard",
                        capabilities=["support"],
                        sla_template="standard-support",
                        status=AgentStatus.ACTIVE,
                        steps_done=[],
                        traffic_weight="1",
                        extra={},
                        created_at=now,
                        updated_at=now,
                    )
                )
            s.flush()
            for a in ids:
                s.add(
                    SlaContract(
                        sla_id=f"sla-{a}",
                        agent_id=a,
                        template="standard-support",
                        terms=terms,
                        created_at=now,
                    )
                )
        return ids

    def rows(self, episode_id: str) -> list[SlaEscalation]:
        with self.sessions() as s:
            return list(
                s.scalars(
                    select(SlaEscalation)
                    .where(SlaEscalation.episode_id == episode_id)
                    .order_by(SlaEscalation.tier)
                )
            )

    def settle(self, episode_id: str, timeout_s: float = 30) -> None:
        """Wait until every tier sent for the episode has finished on its worker."""
        wait_until(
            lambda: all(ActionStatus(r.status).finished for r in self.rows(episode_id)),
            timeout_s=timeout_s,
        )

    def run(
        self, agent: str, minutes: int, *, recover_at: int | None = None
    ) -> tuple[str, list[tuple[int, int]]]:
        """Minute by minute on the ManualClock: checks every 5 min, the engine each minute, workers
        do the rest. Returns the episode and (minute, tier) of everything sent for it, in the
        order sent."""
        episode_id = ""
        start = self.clock.now()
        first = len(self.sent)
        for minute in range(minutes + 1):
            self.clock.set(start + timedelta(minutes=minute))
            if recover_at is not None and minute == recover_at:
                self.recovers(agent)
            if minute % 5 == 0:
                self.snapshot([agent])
                episode_id = service.check_batch(self.sla(), [agent]).episodes.get(
                    agent, episode_id
                )
            if episode_id:
                evaluate(self.engine(), [episode_id])
                self.settle(episode_id)
        sent = [
            (int((at - start).total_seconds() // 60), tier)
            for at, e, tier in self.sent[first:]
            if e == episode_id
        ]
        return episode_id, sent


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    base = tmp_path_factory.mktemp("escalation")
    hook = Hook()
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    policy["escalation"]["remediation_webhook"] = hook.url
    policy["audit"]["mirror_enabled"] = False
    policy_file = base / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    with local_stack(base / "stack", policy_file=policy_file) as stack, audit.capture():
        for queue in TIER_QUEUES:
            stack.start_worker([queue], concurrency=2, pool="threads", name=queue.replace(".", "-"))
        stack.start_worker(["sla"], concurrency=2, pool="threads", name="sla")
        keys = StaticKeyRing(stack.settings.gateway.admin_key)
        gateway = LoopGatewayClient.from_settings(stack.settings, keys)
        try:
            yield System(
                stack,
                session_factory(engine_for(stack.settings.sqlalchemy_url)),
                gateway,
                keys,
                hook,
            )
        finally:
            gateway.close()
            hook.close()


def test_a_35_minute_episode_runs_tiers_1_to_4_once_each_in_order_each_on_its_own_queue(
    system: System,
) -> None:
    sb = system.stack.sandbox()
    [agent] = system.agents(1, "long")
    system.breaks(agent)
    episode_id, sent = system.run(agent, 35)

    assert sent == [(0, 1), (5, 2), (15, 3), (30, 4)]
    rows = system.rows(episode_id)
    assert [(r.tier, r.status, r.queue, r.attempts, r.dispatch_count) for r in rows] == [
        (1, "done", "escalation.tier1", 1, 1),
        (2, "done", "escalation.tier2", 1, 1),
        (3, "done", "escalation.tier3", 1, 1),
        (4, "done", "escalation.tier4", 1, 1),
    ]
    # Each ran on the worker of its own queue, in order.
    assert [r.claimed_by.split("@")[0] for r in rows if r.claimed_by] == [
        q.replace(".", "-") for q in TIER_QUEUES
    ]
    started = [r.started_at for r in rows]
    assert started == sorted(started)  # type: ignore[type-var]

    assert [c["agent_id"] for c in system.hook.calls if c["episode_id"] == episode_id] == [agent]
    assert rows[0].result["webhook_status"] == 202
    with system.sessions() as s:
        a = s.get(Agent, agent)
        assert a is not None and a.status == AgentStatus.PAUSED and a.traffic_weight == "0.5"
    # Frozen at the gateway: its own answer to a deposit says so.
    assert rows[3].result["wallet_frozen"] is True
    assert sb.agent(agent)["wallet"]["frozen"] is True and system.deposit_refused(agent)
    # Tier 3 and tier 4 each told the operator once, from the admin agent, as text.
    notes = system.messages(agent)
    admin = system.stack.settings.gateway.admin_agent_id
    assert [(m.sender, m.message_type, m.subject) for m in reversed(notes)] == [
        (admin, "text", f"SLA breach: {agent} (tier 3)"),
        (admin, "text", f"SLA breach: {agent} frozen (tier 4)"),
    ]
    assert all("AI agent" in (m.body or "") for m in notes)
    assert {m.id for m in notes} == {rows[2].result["message_id"], rows[3].result["message_id"]}
    request_id = rows[3].result["release_request"]
    assert request_id

    # Another ten minutes change nothing: each tier once per episode.
    more = []
    for _ in range(10):
        system.clock.advance(60)
        more += evaluate(system.engine(), [episode_id])
    assert more == []

    # A human approves the release: the wallet is unfrozen at the gateway, deposits go through.
    gate = Approvals(system.sessions, system.stack.settings.policy.approvals, clock=SystemClock())
    for approver in ("alice", "bob", "carol"):  # as many as the HIGH risk asks
        if gate.approve(request_id, approver).status == "approved":
            break
    assert release_agent(
        gate, system.sessions, system.gateway, request_id=request_id, agent_id=agent
    )
    assert sb.agent(agent)["wallet"]["frozen"] is False and not system.deposit_refused(agent)


def test_an_episode_recovering_at_20_minutes_stops_after_tier_3_restores_traffic_and_notifies(
    system: System,
) -> None:
    sb = system.stack.sandbox()
    [agent] = system.agents(1, "back")
    system.breaks(agent)
    episode_id, sent = system.run(agent, 40, recover_at=20)

    assert sent == [
        (0, 1),
        (5, 2),
        (15, 3),
        (25, 0),
    ]  # tier 0: the recovery stage, after two good checks
    with system.sessions() as s:
        ep = s.get(SlaEpisode, episode_id)
        a = s.get(Agent, agent)
        assert ep is not None and ep.state == "closed" and ep.close_reason == "recovered"
        assert ep.closed_at == ep.opened_at + timedelta(minutes=20)
        assert a is not None and a.status == AgentStatus.ACTIVE and a.traffic_weight == "1"
    assert sb.agent(agent)["wallet"]["frozen"] is False and not system.deposit_refused(agent)
    notes = system.messages(agent)
    assert [m.subject for m in reversed(notes)] == [
        f"SLA breach: {agent} (tier 3)",
        f"SLA resolved: {agent}",
    ]
    assert all(m.message_type == "text" for m in notes)
    assert "traffic weight is restored" in (notes[0].body or "")
    assert [r.queue for r in system.rows(episode_id)] == ["escalation.tier3", *TIER_QUEUES[:3]]


def test_duplicated_tier_messages_change_nothing(system: System) -> None:
    sb = system.stack.sandbox()
    [agent] = system.agents(1, "dup")
    system.breaks(agent)
    episode_id, _ = system.run(agent, 30)
    before_rows = [
        (r.tier, r.status, r.attempts, r.finished_at, dict(r.result))
        for r in system.rows(episode_id)
    ]
    before_counts = sb.counters(agents=False)["tools"]
    hook_calls = len(system.hook.calls)
    logs = {q: system.stack.base_dir / "logs" / f"{q.replace('.', '-')}.log" for q in TIER_QUEUES}
    seen = {q: logs[q].read_text().count("duplicate, nothing to do") for q in TIER_QUEUES}

    tasks = {
        1: "escalation.tier1.remediate",
        2: "escalation.tier2.reroute",
        3: "escalation.tier3.notify",
        4: "escalation.tier4.freeze",
    }
    system.send([(tasks[t], {"episode_id": episode_id, "tier": t}) for t in (1, 2, 3, 4)] * 2)
    wait_until(
        lambda: all(
            logs[q].read_text().count("duplicate, nothing to do") >= seen[q] + 2
            for q in TIER_QUEUES
        ),
        timeout_s=30,
    )

    assert [
        (r.tier, r.status, r.attempts, r.finished_at, dict(r.result))
        for r in system.rows(episode_id)
    ] == before_rows
    after_counts = sb.counters(agents=False)["tools"]
    for tool in ("freeze_wallet", "send_message", "open_dispute"):
        assert after_counts.get(tool, 0) == before_counts.get(tool, 0), tool
    assert len(system.hook.calls) == hook_calls
    with system.sessions() as s:
        a = s.get(Agent, agent)
        assert a is not None and a.traffic_weight == "0.5"


def test_the_sweep_and_evaluate_agent_by_name_on_the_sla_queue(system: System) -> None:
    agents = system.agents(6, "swp")
    for a in agents[:2]:
        system.breaks(a)
    # The SLA worker judges what the last sweep saw, on the real clock.
    system.snapshot(agents, datetime.now(UTC))
    app = system.stack.celery()
    app.send_task("sla.sweep", kwargs={"force": True})
    r = connect(system.stack.settings.redis_url)

    def finished() -> dict[str, Any] | None:
        progress = service.sweep_progress(r)
        return progress if progress and "finished_at" in progress else None

    progress = wait_until(finished, timeout_s=60)
    assert isinstance(progress, dict) and progress["failed"] == 0
    with system.sessions() as s:
        opened = s.scalars(
            select(SlaEpisode).where(SlaEpisode.agent_id.in_(agents), SlaEpisode.state == "open")
        ).all()
    assert sorted(e.agent_id for e in opened) == sorted(agents[:2])
    assert all(e.opened_by == "sweep" for e in opened)

    # The monitoring alert rules hand an agent over by task name.
    system.breaks(agents[2])
    system.snapshot(agents[2:3], datetime.now(UTC))
    app.send_task(
        "sla.evaluate_agent", kwargs={"agent_id": agents[2], "source": "alert:error-rate"}
    )

    def opened_by_alert() -> SlaEpisode | None:
        with system.sessions() as s:
            return s.scalars(select(SlaEpisode).where(SlaEpisode.agent_id == agents[2])).first()

    ep = wait_until(opened_by_alert, timeout_s=30)
    assert isinstance(ep, SlaEpisode) and ep.opened_by == "alert:error-rate"
    # Its tier 1 went straight to the tier-1 queue and ran there.
    wait_until(lambda: [x.status for x in system.rows(ep.episode_id)] == ["done"], timeout_s=30)
    assert system.rows(ep.episode_id)[0].queue == "escalation.tier1"
