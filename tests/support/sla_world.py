"""A world for SLA and escalation unit tests: migrated SQLite, fakeredis, a ManualClock,
and a scripted gateway behind httpx.MockTransport driven through the real client."""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import yaml
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy, load_policy
from config.settings import DEFAULT_POLICY_FILE, SlaSettings
from fleet.approvals import Approvals
from fleet.audit.events import AuditEvent
from fleet.clock import ManualClock
from fleet.escalation.actions import ActionDeps, Outcome, run_action
from fleet.escalation.engine import EngineDeps, Message
from fleet.gateway._core import GatewayConfig
from fleet.gateway.loop import LoopGatewayClient
from fleet.sla.service import SlaDeps
from fleet.storage.db import create_db_engine, migrate, session_factory, write_session
from fleet.storage.records import Agent, AgentStatus, SlaContract

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class FakeGateway:
    """The handful of tools SLA enforcement calls, with state and call counts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.breaching: dict[str, list[str]] = {}
        self.down: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.messages: list[dict[str, Any]] = []
        self.disputes: dict[str, dict[str, Any]] = {}
        self.frozen: set[str] = set()
        self.fail_tools: dict[str, int] = {}  # tool -> HTTP status to answer
        self._ids = itertools.count(1)

    def breach(self, agent_id: str, *terms: str) -> None:
        self.breaching[agent_id] = list(terms or ("p99_latency_ms",))

    def comply(self, agent_id: str) -> None:
        self.breaching.pop(agent_id, None)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        tool, inp = body["tool"], body.get("input", {})
        with self.lock:
            self.calls[tool] += 1
            if tool in self.fail_tools:
                status = self.fail_tools[tool]
                return httpx.Response(
                    status, json={"error": {"code": "unavailable", "message": "scripted"}}
                )
            return self._answer(tool, inp)

    def _answer(self, tool: str, inp: dict[str, Any]) -> httpx.Response:
        n = next(self._ids)
        if tool == "check_sla_compliance":
            agent = inp["agent_id"]
            if agent in self.down:
                return httpx.Response(
                    503, json={"error": {"code": "unavailable", "message": "down"}}
                )
            terms = self.breaching.get(agent)
            return httpx.Response(
                200,
                json={
                    "compliant": terms is None,
                    "margin_pct": -40.0 if terms else 35.0,
                    "breached_terms": terms or [],
                },
            )
        if tool == "send_message":
            self.messages.append(inp)
            return httpx.Response(200, json={"message_id": f"msg-{n}"})
        if tool == "create_dispute":
            dispute_id = f"dsp-{n}"
            self.disputes[dispute_id] = {**inp, "status": "open"}
            return httpx.Response(200, json={"dispute_id": dispute_id, "status": "open"})
        if tool == "resolve_dispute":
            dispute = self.disputes[inp["dispute_id"]]
            if dispute["status"] != "open":
                return httpx.Response(
                    409, json={"error": {"code": "dispute_resolved", "message": "resolved"}}
                )
            dispute.update(
                status="resolved",
                resolution=inp["resolution"],
                amount=inp["amount"],
                notes=inp["notes"],
            )
            return httpx.Response(200, json={"dispute_id": inp["dispute_id"], "status": "resolved"})
        if tool == "freeze_wallet":
            self.frozen.add(inp["agent_id"])
            return httpx.Response(200, json={"wallet_id": f"w-{inp['agent_id']}", "frozen": True})
        if tool == "unfreeze_wallet":
            self.frozen.discard(inp["agent_id"])
            return httpx.Response(200, json={"wallet_id": f"w-{inp['agent_id']}", "frozen": False})
        return httpx.Response(404, json={"error": {"code": "unknown_tool", "message": tool}})


@dataclass
class World:
    sessions: sessionmaker[Session]
    redis: fakeredis.FakeRedis
    gateway: FakeGateway
    client: LoopGatewayClient
    clock: ManualClock
    policy: Policy
    events: list[AuditEvent]
    hook: httpx.MockTransport
    hook_calls: list[dict[str, Any]] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)
    settings: SlaSettings = field(default_factory=SlaSettings)

    def send(self, messages: list[Message]) -> None:
        self.sent.extend(messages)

    def sla(self) -> SlaDeps:
        return SlaDeps(
            self.sessions,
            self.redis,
            self.client,
            self.policy,
            self.settings,
            self.clock,
            self.send,
        )

    def engine(self, with_locks: bool = False) -> EngineDeps:
        return EngineDeps(
            self.sessions,
            self.policy.escalation,
            self.clock,
            self.send,
            redis=self.redis if with_locks else None,
        )

    def actions(self) -> ActionDeps:
        approvals = Approvals(self.sessions, self.policy.approvals, clock=self.clock)
        return ActionDeps(
            self.sessions,
            self.policy,
            self.clock,
            self.client,
            httpx.Client(transport=self.hook),
            approvals,
        )

    def add_agents(
        self,
        n: int,
        *,
        fleet: str = "demo",
        prefix: str = "ag",
        status: AgentStatus = AgentStatus.ACTIVE,
        template: str = "standard-support",
    ) -> list[str]:
        ids = [f"{prefix}-{i:04d}-0000abcd" for i in range(n)]
        terms = self.policy.sla_templates[template].model_dump(mode="json")
        with write_session(self.sessions) as s:
            for agent_id in ids:
                s.add(
                    Agent(
                        agent_id=agent_id,
                        fleet=fleet,
                        environment="test",
                        id_prefix=prefix,
                        tier="standard",
                        capabilities=["support"],
                        sla_template=template,
                        status=status,
                        steps_done=[],
                        traffic_weight="1",
                        extra={},
                        created_at=START,
                        updated_at=START,
                    )
                )
            s.flush()
            for agent_id in ids:
                s.add(
                    SlaContract(
                        sla_id=f"sla-{agent_id}",
                        agent_id=agent_id,
                        template=template,
                        terms=terms,
                        created_at=START,
                    )
                )
        return ids

    def run_sent(self, *, worker: str = "w1") -> list[tuple[Message, Outcome]]:
        """Deliver what the engine sent, as the tier workers would (in the order sent)."""
        out = []
        deps = self.actions()
        while self.sent:
            message = self.sent.pop(0)
            name, kwargs = message
            queue = name.rsplit(".", 1)[0]
            out.append(
                (
                    message,
                    run_action(
                        deps, kwargs["episode_id"], kwargs["tier"], worker=worker, queue=queue
                    ),
                )
            )
        return out

    def agent(self, agent_id: str) -> Agent:
        with self.sessions() as s:
            agent = s.get(Agent, agent_id)
            assert agent is not None
            return agent


def write_policy(tmp_path: Path, **changes: Any) -> Policy:
    raw = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    raw["audit"]["mirror_enabled"] = False
    for dotted, value in changes.items():
        node = raw
        *path, last = dotted.split("__")
        for part in path:
            node = node[part]
        node[last] = value
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_policy(path)


def make_world(
    tmp_path: Path,
    number: int,
    events: list[AuditEvent],
    url: str | None = None,
    **policy_changes: Any,
) -> World:
    engine = create_db_engine(url or f"sqlite:///{tmp_path / f'fleet{number}.db'}")
    migrate(engine)
    gateway = FakeGateway()
    config = GatewayConfig(url="http://gateway.test/v1", admin_key="k", max_attempts=1)  # type: ignore[arg-type]
    client = LoopGatewayClient(config, transport=httpx.MockTransport(gateway.handle))
    hook_calls: list[dict[str, Any]] = []

    def hook(request: httpx.Request) -> httpx.Response:
        hook_calls.append(json.loads(request.content))
        return httpx.Response(202, json={"accepted": True})

    return World(
        session_factory(engine),
        fakeredis.FakeRedis(decode_responses=True),
        gateway,
        client,
        ManualClock(START),
        write_policy(tmp_path, **policy_changes),
        events,
        httpx.MockTransport(hook),
        hook_calls,
    )
