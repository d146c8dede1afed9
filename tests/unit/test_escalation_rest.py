"""Tier 3, tier 4, recovery and release against the gateway's REST API (a scripted
double behind httpx.MockTransport, through the real client)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from config.policy import load_policy
from config.settings import DEFAULT_POLICY_FILE
from fleet import audit
from fleet.approvals import Approvals
from fleet.approvals.release import release_agent
from fleet.clock import ManualClock
from fleet.escalation.actions import ActionDeps, run_action
from fleet.gateway import GatewayClient
from fleet.secrets import AgentKeyRing, KeyVault, new_vault_key
from fleet.sla.models import (
    RESOLVE_TIER,
    ActionStatus,
    DisputeStatus,
    EpisodeState,
    SlaDispute,
    SlaEpisode,
    SlaEscalation,
)
from fleet.storage.db import create_db_engine, migrate, session_factory, write_session
from fleet.storage.records import Agent, AgentStatus
from tests.support.rest_gateway import ADMIN_KEY, RestGateway

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
AGENT = "cs-triage-0001-0000abcd"
BUYER = "buyer-0042"


@dataclass
class World:
    deps: ActionDeps
    gateway: RestGateway
    client: GatewayClient
    clock: ManualClock
    events: list[Any]
    vault: KeyVault

    def episode(self, *, counterparty: str | None = None, minutes: int = 35) -> str:
        episode_id = f"ep{len(self.gateway.seen)}{minutes}"
        with write_session(self.deps.sessions) as s:
            s.add(
                SlaEpisode(
                    episode_id=episode_id,
                    agent_id=AGENT,
                    fleet="support",
                    sla_id=f"sla-{AGENT}",
                    state=EpisodeState.OPEN,
                    open_agent=AGENT,
                    breached_terms=["p99_latency_ms"],
                    opened_at=self.clock.now() - timedelta(minutes=minutes),
                    opened_by="sweep",
                    last_breach_at=self.clock.now(),
                    compliant_streak=0,
                    counterparty=counterparty,
                )
            )
        return episode_id

    def dispatch(self, episode_id: str, tier: int) -> None:
        with write_session(self.deps.sessions) as s:
            s.add(
                SlaEscalation(
                    episode_id=episode_id,
                    tier=tier,
                    action="x",
                    task=f"escalation.tier{tier}",
                    status=ActionStatus.DISPATCHED,
                    dispatched_at=self.clock.now(),
                    steps={},
                    result={},
                )
            )

    def close(self, episode_id: str) -> None:
        with write_session(self.deps.sessions) as s:
            ep = s.get(SlaEpisode, episode_id)
            assert ep is not None
            ep.state, ep.open_agent = EpisodeState.CLOSED, None
            ep.closed_at, ep.close_reason = self.clock.now(), "compliant again"

    def agent(self) -> Agent:
        with self.deps.sessions() as s:
            agent = s.get(Agent, AGENT)
            assert agent is not None
            return agent


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    raw = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    raw["audit"]["mirror_enabled"] = False
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(raw))
    policy = load_policy(tmp_path / "policy.yaml")
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    vault = KeyVault(new_vault_key())
    gateway = RestGateway()
    gateway.register("fleet-operator")
    agent_key = gateway.register(AGENT, "50.00")
    with write_session(sessions) as s:
        s.add(
            Agent(
                agent_id=AGENT,
                fleet="support",
                environment="test",
                id_prefix="cs-triage",
                tier="pro",
                capabilities=["support"],
                sla_template="standard-support",
                status=AgentStatus.ACTIVE,
                steps_done=[],
                traffic_weight="1",
                api_key_encrypted=vault.encrypt(agent_key),
                extra={"key": {"tier": "free"}},
                created_at=START,
                updated_at=START,
            )
        )
    client = gateway.client(AgentKeyRing(sessions, vault, ADMIN_KEY))
    clock = ManualClock(START)
    with audit.capture() as events:
        deps = ActionDeps(
            sessions,
            policy,
            clock,
            client,
            httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(202))),
            Approvals(sessions, policy.approvals, clock=clock),
        )
        yield World(deps, gateway, client, clock, events, vault)
    client.close()
    engine.dispose()


def _use_pro_key(w: World) -> None:
    with write_session(w.deps.sessions) as s:
        agent = s.get(Agent, AGENT)
        assert agent is not None
        agent.api_key_encrypted = w.vault.encrypt(w.gateway.mint(AGENT, "pro"))


def test_tier_4_freezes_the_wallet_at_the_gateway_and_only_an_approved_release_unfreezes_it(
    world: World,
) -> None:
    w = world
    episode = w.episode()
    w.dispatch(episode, 4)
    outcome = run_action(w.deps, episode, 4, worker="w1")
    assert outcome.status == "done" and outcome.result["wallet_frozen"] is True
    assert w.gateway.wallets[AGENT].frozen
    assert [s.agent for s in w.gateway.calls("freeze_wallet")] == ["fleet-admin"]
    assert w.agent().status == AgentStatus.PAUSED
    [notice] = w.gateway.messages
    assert (notice["sender"], notice["recipient"], notice["message_type"]) == (
        "fleet-admin",
        "fleet-operator",
        "text",
    )
    assert notice["body"].startswith("[Automated message: sent by AI agent " + AGENT)
    assert run_action(w.deps, episode, 4, worker="w2").status == "duplicate"
    assert len(w.gateway.calls("freeze_wallet")) == 1

    request_id = outcome.result["release_request"]
    w.deps.approvals.approve(request_id, "alice")
    assert release_agent(
        w.deps.approvals, w.deps.sessions, w.client, request_id=request_id, agent_id=AGENT
    )
    assert not w.gateway.wallets[AGENT].frozen and w.agent().status == AgentStatus.ACTIVE
    assert [s.agent for s in w.gateway.calls("unfreeze_wallet")] == ["fleet-admin"]


def test_tier_3_messages_the_operator_and_opens_no_dispute_without_a_held_escrow(
    world: World,
) -> None:
    w = world
    episode = w.episode(counterparty=BUYER, minutes=20)
    w.dispatch(episode, 3)
    outcome = run_action(w.deps, episode, 3, worker="w1")
    assert outcome.status == "done"
    assert "no escrow with buyer-0042" in outcome.result["dispute"]
    assert not w.gateway.calls("open_dispute")
    [message] = w.gateway.messages
    assert message["sender"] == "fleet-admin" and message["recipient"] == "fleet-operator"
    assert "(tier 3)" in message["subject"] and "AI agent" in message["body"]


def test_a_held_escrow_is_disputed_as_the_agent_and_resolved_by_the_admin_on_recovery(
    world: World,
) -> None:
    w = world
    _use_pro_key(w)
    w.gateway.escrows["esc-1"] = {"status": "held", "amount": "20.0"}
    with write_session(w.deps.sessions) as s:
        agent = s.get(Agent, AGENT)
        assert agent is not None
        agent.extra = {**agent.extra, "escrows": {BUYER: "esc-1"}}
    episode = w.episode(counterparty=BUYER, minutes=20)
    w.dispatch(episode, 3)
    outcome = run_action(w.deps, episode, 3, worker="w1")
    assert outcome.status == "done", outcome.result
    [(dispute_id, dispute)] = w.gateway.disputes.items()
    assert outcome.result["dispute_id"] == dispute_id
    assert dispute["escrow_id"] == "esc-1" and dispute["opener"] == AGENT
    assert [s.agent for s in w.gateway.calls("open_dispute")] == [AGENT], "the agent's own key"
    assert "AI agent" in dispute["reason"]

    w.close(episode)
    w.dispatch(episode, RESOLVE_TIER)
    done = run_action(w.deps, episode, RESOLVE_TIER, worker="w1")
    assert done.status == "done" and done.result["disputes_resolved"] == [dispute_id]
    assert dispute["status"] == "resolved" and dispute["resolution"] == "refund"
    assert dispute["resolved_by"] == "fleet-admin"
    assert w.gateway.escrows["esc-1"]["status"] == "refunded"
    with w.deps.sessions() as s:
        row = s.get(SlaDispute, dispute_id)
        assert row is not None and row.status == DisputeStatus.RESOLVED
        assert Decimal(row.refund or "0") == Decimal("20.00")


def test_a_dispute_with_a_free_key_fails_the_action_with_the_tier_reason(world: World) -> None:
    w = world
    w.gateway.escrows["esc-1"] = {"status": "held", "amount": "5.0"}
    with write_session(w.deps.sessions) as s:
        agent = s.get(Agent, AGENT)
        assert agent is not None
        agent.extra = {**agent.extra, "escrows": {BUYER: "esc-1"}}
    episode = w.episode(counterparty=BUYER, minutes=20)
    w.dispatch(episode, 3)
    outcome = run_action(w.deps, episode, 3, worker="w1")
    assert outcome.status == "failed"
    assert "InsufficientTier" in outcome.result["error"], outcome.result
    assert "message" in outcome.result["steps_done"], "the operator was told before"
