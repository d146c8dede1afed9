"""A world for SLA and escalation unit tests: migrated SQLite, fakeredis, a ManualClock,
and the gateway's REST double behind httpx.MockTransport driven through the real client."""

from __future__ import annotations

import json
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
from fleet.gateway import StaticKeyRing
from fleet.gateway._core import GatewayConfig
from fleet.gateway.loop import LoopGatewayClient
from fleet.monitoring.snapshot import Health, Snapshot, snapshot_key
from fleet.sla.service import SlaDeps
from fleet.storage.db import create_db_engine, migrate, session_factory, write_session
from fleet.storage.records import Agent, AgentStatus, SlaContract
from tests.support.rest_gateway import ADMIN_KEY, RestGateway, Seen

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class FakeGateway:
    """The gateway's REST double (tests.support.rest_gateway) plus what SLA tests steer:
    which agents breach (the metrics sweep's snapshots say so) and which are unreachable."""

    def __init__(self) -> None:
        self.rest = RestGateway()
        self.rest.register("fleet-operator")
        self.breaching: dict[str, list[str]] = {}
        self.down: set[str] = set()
        self.fail_tools: dict[str, int] = {}  # tool -> HTTP status to answer, until removed
        self.agents: list[str] = []

    def breach(self, agent_id: str, *terms: str) -> None:
        self.breaching[agent_id] = list(terms or ("p99_latency_ms",))

    def comply(self, agent_id: str) -> None:
        self.breaching.pop(agent_id, None)

    def poll(self, r: fakeredis.FakeRedis, now: datetime) -> None:
        """What the metrics sweep would have written just now, agent by agent."""
        for agent_id in self.agents:
            terms = self.breaching.get(agent_id, [])
            if agent_id in self.down:
                snap = Snapshot(agent_id, now.timestamp(), Health.UNKNOWN, error="unreachable")
            else:
                snap = Snapshot(
                    agent_id,
                    now.timestamp(),
                    Health.DEGRADED if terms else Health.HEALTHY,
                    latency_p99=10_000.0 if "p99_latency_ms" in terms else 100.0,
                    error_rate=0.5 if "max_error_rate" in terms else 0.0,
                )
            r.hset(snapshot_key(agent_id), mapping=snap.to_redis())  # type: ignore[arg-type]

    @property
    def calls(self) -> Counter[str]:
        return Counter(seen.tool for seen in self.rest.seen)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.rest.messages

    @property
    def disputes(self) -> dict[str, dict[str, Any]]:
        return self.rest.disputes

    @property
    def frozen(self) -> set[str]:
        return {a for a, wallet in self.rest.wallets.items() if wallet.frozen}

    def handle(self, request: httpx.Request) -> httpx.Response:
        route = self.rest._route(request.method, request.url.path)
        if route is not None and route[0] in self.fail_tools:
            self.rest.seen.append(Seen(request.method, request.url.path, route[0], None, {}, None))
            status = self.fail_tools[route[0]]
            return httpx.Response(
                status,
                json={"type": "https://api.greenhelix.net/errors/unavailable", "status": status},
                headers={"content-type": "application/problem+json"},
            )
        return self.rest.handle(request)


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
    keys: StaticKeyRing
    hook_calls: list[dict[str, Any]] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)
    settings: SlaSettings = field(default_factory=SlaSettings)

    def send(self, messages: list[Message]) -> None:
        self.sent.extend(messages)

    def sla(self) -> SlaDeps:
        # Every check reads what the metrics sweep last wrote: write it fresh.
        self.gateway.poll(self.redis, self.clock.now())
        return SlaDeps(
            self.sessions,
            self.redis,
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
        self.gateway.agents.extend(ids)
        with write_session(self.sessions) as s:
            for agent_id in ids:
                self.keys.add(agent_id, self.gateway.rest.register(agent_id, "50.00"))
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
    config = GatewayConfig(url="http://gateway.test", max_attempts=1)
    keys = StaticKeyRing(ADMIN_KEY)
    client = LoopGatewayClient(config, keys, transport=httpx.MockTransport(gateway.handle))
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
        keys,
        hook_calls,
    )
