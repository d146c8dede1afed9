"""Fleet Commander's own code, wired to the gateway under test as a worker would wire it.

The domain functions run with their real dependencies: a migrated SQLite database,
the key vault and the agents' key ring, the blocking gateway client on its background
loop, the per-agent locks on a Redis of the suite's own, the system clock, and the
audit sink captured in memory. No Celery: the scenarios call the functions a task
would call. What they did is then checked with the gateway's own reads
(:class:`GatewayUnderTest`'s raw httpx clients), never through this client.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy.engine import Engine

from config.policy import Policy, load_policy
from config.settings import DEFAULT_POLICY_FILE
from fleet import audit
from fleet.approvals import Approvals
from fleet.clock import SystemClock
from fleet.escalation.actions import ActionDeps, Outcome, run_action
from fleet.gateway import GatewayConfig
from fleet.gateway.loop import LoopGatewayClient
from fleet.hotstate import Lease, connect, try_lock
from fleet.provisioning import pipeline
from fleet.secrets import AgentKeyRing, KeyVault, new_vault_key
from fleet.sla.models import ActionStatus, EpisodeState, SlaEpisode, SlaEscalation
from fleet.storage.db import create_db_engine, migrate, session_factory, write_session
from fleet.storage.records import Agent, AgentStatus
from tests.contract.conftest import GatewayUnderTest, MintKey

FLEET = "contract"
OPERATOR_BY = "contract-suite-operator"


@dataclass
class Commander:
    """One Fleet Commander installation pointed at the gateway under test."""

    gateway: GatewayUnderTest
    mint_key: MintKey
    engine: Engine
    deps: pipeline.ProvisioningDeps
    actions: ActionDeps
    client: LoopGatewayClient
    treasury: str
    operator: str
    audit: list[dict[str, Any]] = field(default_factory=list)
    _jobs: int = 0

    @property
    def policy(self) -> Policy:
        return self.deps.policy

    # ------------------------------------------------------------------ our records

    def agent(self, agent_id: str) -> Agent:
        with self.deps.sessions() as s:
            agent = s.get(Agent, agent_id)
            assert agent is not None, f"no record of {agent_id}"
            s.expunge(agent)
            return agent

    def key_of(self, agent_id: str) -> str:
        token = self.agent(agent_id).api_key_encrypted
        assert token, f"we hold no key for {agent_id}"
        return self.deps.vault.decrypt(token)

    def held_keys(self, agent_id: str) -> list[str]:
        """Every key we hold for the agent: its current one and those kept after a change."""
        agent = self.agent(agent_id)
        tokens = [agent.api_key_encrypted] if agent.api_key_encrypted else []
        tokens += [k["key_encrypted"] for k in agent.extra.get("held_keys", [])]
        return [self.deps.vault.decrypt(t) for t in tokens]

    # ------------------------------------------------------------------ provisioning

    def manifest(self, id_prefix: str, tier: str, balance: str, count: int = 1) -> dict[str, Any]:
        return {
            "fleet": FLEET,
            "environment": "test",
            "agents": [
                {
                    "id_prefix": id_prefix,
                    "count": count,
                    "tier": tier,
                    "initial_balance": balance,
                    "capabilities": ["text-classification", "sentiment-analysis"],
                    "trust_claims": ["response-time-p99-under-2s"],
                    "sla_template": "standard-support",
                    "pricing": {"per_call": "0.05"},
                }
            ],
        }

    def submit(self, id_prefix: str, tier: str = "pro", balance: str = "50.00") -> str:
        """Record a one-agent job and run the agent's steps once; its id."""
        self._jobs += 1
        submitted = pipeline.submit_job(
            self.deps,
            self.manifest(id_prefix, tier, balance),
            f"{id_prefix}-job{self._jobs}",
            OPERATOR_BY,
        )
        [agent_id] = submitted.to_dispatch
        pipeline.provision_agent(self.deps, agent_id)
        return agent_id

    def import_pro_key(self, agent_id: str) -> pipeline.KeyImport:
        """What the operator does for a pro group: mint a pro key outside the API, import it."""
        return pipeline.import_agent_key(
            self.deps, agent_id, self.mint_key(agent_id, "pro"), OPERATOR_BY
        )

    def provision(self, id_prefix: str, tier: str = "pro", balance: str = "50.00") -> str:
        """An agent taken to active, with the operator's pro key where its group needs one."""
        agent_id = self.submit(id_prefix, tier, balance)
        if self.agent(agent_id).status == AgentStatus.AWAITING_KEY:
            assert self.import_pro_key(agent_id).redispatch
            pipeline.provision_agent(self.deps, agent_id)
        agent = self.agent(agent_id)
        assert agent.status == AgentStatus.ACTIVE, (agent.status, agent.failure_reason)
        return agent_id

    def backdate_key(self, agent_id: str, days: float) -> None:
        """Make the agent's key look ``days`` old, so the rotation schedule finds it due."""
        with write_session(self.deps.sessions) as s:
            agent = s.get(Agent, agent_id)
            assert agent is not None and agent.key_rotated_at is not None
            agent.key_rotated_at = agent.key_rotated_at - timedelta(days=days)

    # ------------------------------------------------------------------ escalation

    def open_episode(self, agent_id: str, *, counterparty: str | None = None) -> str:
        """An SLA violation episode as the compliance sweep opens it (the gateway has none)."""
        now = self.deps.clock.now()
        episode_id = f"ep-{agent_id[-8:]}-{len(self.audit)}"[:32]
        with write_session(self.deps.sessions) as s:
            s.add(
                SlaEpisode(
                    episode_id=episode_id,
                    agent_id=agent_id,
                    fleet=FLEET,
                    sla_id=f"sla-{agent_id}",
                    state=EpisodeState.OPEN,
                    open_agent=agent_id,
                    breached_terms=["p99_latency_ms"],
                    opened_at=now - timedelta(minutes=35),
                    opened_by="sweep",
                    last_breach_at=now,
                    compliant_streak=0,
                    counterparty=counterparty,
                )
            )
        return episode_id

    def close_episode(self, episode_id: str) -> None:
        with write_session(self.deps.sessions) as s:
            ep = s.get(SlaEpisode, episode_id)
            assert ep is not None
            ep.state, ep.open_agent = EpisodeState.CLOSED, None
            ep.closed_at, ep.close_reason = self.deps.clock.now(), "compliant again"

    def escalate(self, episode_id: str, tier: int) -> Outcome:
        """Dispatch one tier as the escalation engine does, and run it as its worker would."""
        with write_session(self.deps.sessions) as s:
            s.add(
                SlaEscalation(
                    episode_id=episode_id,
                    tier=tier,
                    action=f"tier{tier}",
                    task=f"escalation.tier{tier}",
                    status=ActionStatus.DISPATCHED,
                    dispatched_at=self.deps.clock.now(),
                    steps={},
                    result={},
                )
            )
        return run_action(self.actions, episode_id, tier, worker="contract-worker")

    def record_escrow(self, agent_id: str, counterparty: str, escrow_id: str) -> None:
        """What the code that made an escrow records, so tier 3 can dispute it."""
        with write_session(self.deps.sessions) as s:
            agent = s.get(Agent, agent_id)
            assert agent is not None
            escrows = {**agent.extra.get("escrows", {}), counterparty: escrow_id}
            agent.extra = {**agent.extra, "escrows": escrows}


def _policy(path: Path, treasury: str) -> Policy:
    raw = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    raw["provisioning"]["treasury_wallet"] = treasury
    # The audit mirror publishes to the gateway's event bus from its own outbox
    # worker; the scenarios check the gateway's wallets, keys and listings instead.
    raw["audit"]["mirror_enabled"] = False
    path.write_text(yaml.safe_dump(raw))
    return load_policy(path)


@contextlib.contextmanager
def commander(
    gateway: GatewayUnderTest,
    mint_key: MintKey,
    data_dir: Path,
    treasury: str,
    operator: str,
    redis_url: str,
) -> Iterator[Commander]:
    engine = create_db_engine(f"sqlite:///{data_dir / 'fleet.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    vault = KeyVault(new_vault_key())
    ring = AgentKeyRing(sessions, vault, gateway.admin_key)
    client = LoopGatewayClient(GatewayConfig(url=gateway.base_url, timeout_s=30.0), ring)
    redis = connect(redis_url)
    policy = _policy(data_dir / "policy.yaml", treasury)
    clock = SystemClock()
    audit_entries: list[dict[str, Any]] = []

    def lock(name: str, ttl_s: float) -> contextlib.AbstractContextManager[Lease | None]:
        return try_lock(redis, name, ttl_s)

    deps = pipeline.ProvisioningDeps(
        sessions,
        client,
        policy,
        vault,
        clock,
        lambda **entry: audit_entries.append(entry),
        lock,
        keys=ring,
    )
    remediation = httpx.Client()
    try:
        with audit.capture():
            actions = ActionDeps(
                sessions,
                policy,
                clock,
                client,
                remediation,
                Approvals(sessions, policy.approvals, clock=clock),
                operator_agent_id=operator,
            )
            yield Commander(
                gateway, mint_key, engine, deps, actions, client, treasury, operator, audit_entries
            )
    finally:
        remediation.close()
        client.close()
        redis.close()
        engine.dispose()


def money(value: Any) -> Decimal:
    """A money value from a raw answer, exact whether the gateway sent a string or a number."""
    return Decimal(str(value))
