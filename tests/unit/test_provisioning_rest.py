"""Provisioning, key import, rotation and retirement against the gateway's REST API
(a scripted double behind httpx.MockTransport, driven through the real client)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from config.policy import load_policy
from config.settings import DEFAULT_POLICY_FILE
from fleet.clock import ManualClock
from fleet.gateway import GatewayClient
from fleet.hotstate import Lease
from fleet.monitoring.heartbeats import load_private_key, private_key_hex, public_key_hex
from fleet.provisioning import identity, lifecycle, pipeline
from fleet.secrets import AgentKeyRing, KeyVault, new_vault_key
from fleet.storage.db import create_db_engine, migrate, session_factory
from fleet.storage.records import Agent, AgentStatus, SlaContract
from tests.support.rest_gateway import ADMIN_KEY, RestGateway

TREASURY = "fleet-treasury"


class _Lease:
    def renew(self) -> None:
        pass


@contextlib.contextmanager
def _lock(name: str, ttl: float) -> Iterator[Lease | None]:
    # One process, one worker: nobody else holds an agent.
    yield cast(Lease, _Lease())


@dataclass
class Env:
    deps: pipeline.ProvisioningDeps
    gateway: RestGateway
    client: GatewayClient
    clock: ManualClock
    audit: list[dict[str, Any]] = field(default_factory=list)

    def agent(self, agent_id: str) -> Agent:
        with self.deps.sessions() as s:
            agent = s.get(Agent, agent_id)
            assert agent is not None
            return agent

    def key_of(self, agent_id: str) -> str | None:
        token = self.agent(agent_id).api_key_encrypted
        return self.deps.vault.decrypt(token) if token else None

    def provision(self, manifest: dict[str, Any], job_id: str = "job-1") -> list[str]:
        submitted = pipeline.submit_job(self.deps, manifest, job_id, "test")
        for agent_id in submitted.to_dispatch:
            pipeline.provision_agent(self.deps, agent_id)
        return submitted.to_dispatch


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[Any]:
    made: list[Env] = []

    def make(**provisioning: Any) -> Env:
        raw = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
        raw["provisioning"].update(provisioning)
        path = tmp_path / f"policy{len(made)}.yaml"
        path.write_text(yaml.safe_dump(raw))
        engine = create_db_engine(f"sqlite:///{tmp_path / f'fleet{len(made)}.db'}")
        migrate(engine)
        sessions = session_factory(engine)
        vault = KeyVault(new_vault_key())
        ring = AgentKeyRing(sessions, vault, ADMIN_KEY)
        gateway = RestGateway()
        gateway.register(TREASURY, "0.00")
        client = gateway.client(ring)
        audit: list[dict[str, Any]] = []
        clock = ManualClock(datetime(2026, 12, 1, tzinfo=UTC))
        deps = pipeline.ProvisioningDeps(
            sessions,
            client,
            load_policy(path),
            vault,
            clock,
            lambda **kw: audit.append(kw),
            _lock,
            keys=ring,
        )
        env = Env(deps, gateway, client, clock, audit)
        made.append(env)
        return env

    yield make
    for env in made:
        env.client.close()
        env.deps.sessions.kw["bind"].dispose()


def manifest(tier: str = "pro", count: int = 2, balance: str = "50.00") -> dict[str, Any]:
    return {
        "fleet": "support",
        "environment": "test",
        "agents": [
            {
                "id_prefix": "cs-triage",
                "count": count,
                "tier": tier,
                "initial_balance": balance,
                "capabilities": ["text-classification", "sentiment-analysis"],
                "trust_claims": [{"type": "response-time-p99", "value": "under-2s"}],
                "sla_template": "standard-support",
                "pricing": {"per_call": "0.05"},
            }
        ],
    }


def _import_pro_keys(env: Env, agents: list[str]) -> None:
    for agent_id in agents:
        imported = pipeline.import_agent_key(
            env.deps, agent_id, env.gateway.mint(agent_id, "pro"), "operator"
        )
        assert imported.tier == "pro" and imported.redispatch
        assert pipeline.provision_agent(env.deps, agent_id) == AgentStatus.ACTIVE


def test_a_pro_group_waits_for_an_imported_pro_key_then_finishes_at_the_gateway(
    make_env: Any,
) -> None:
    env = make_env()
    agents = env.provision(manifest())
    for agent_id in agents:
        agent = env.agent(agent_id)
        assert agent.status == AgentStatus.AWAITING_KEY
        assert agent.steps_done == ["register", "identity", "funding", "budget"]
        assert agent.failure_reason is not None
        assert "needs a pro key; the agent holds a free key" in agent.failure_reason
        assert f"fleet keys import {agent_id}" in agent.failure_reason
    progress = pipeline.job_progress(env.deps.sessions, "job-1")
    assert progress is not None and progress.pending == 2
    assert all("needs a pro key" in p for p in progress.problems) and len(progress.problems) == 2
    assert not env.gateway.calls("submit_metrics"), "a free key was never sent to a pro tool"

    _import_pro_keys(env, agents)
    gw = env.gateway
    for agent_id in agents:
        agent = env.agent(agent_id)
        assert agent.status == AgentStatus.ACTIVE
        assert agent.extra["public_key"] == gw.identities[agent_id]
        assert gw.wallets[agent_id].balance == Decimal("50.00"), "500 signup bonus cut to 50"
        # The policy names no cap: it follows budgets (min($50 × 24, $2,000), × 30).
        assert gw.wallets[agent_id].budget == {
            "daily_cap": 1200.0,
            "monthly_cap": 36000.0,
            "alert_threshold": 0.8,
        }
        assert gw.claims[agent_id] == {"p99_latency_ms": 2000, "uptime": 99.5, "accuracy": 0.95}
        assert agent.claim_chain_id == str(gw.chains[agent_id])
        service = gw.services[agent.service_id or ""]
        assert service["provider_id"] == agent_id and service["status"] == "active"
        assert service["tools"] == ["text-classification", "sentiment-analysis"]
        assert agent_id in service["tags"] and "support" in service["tags"]
        assert service["pricing"] == {"model": "per_call", "cost": "0.05"}
        with env.deps.sessions() as s:
            sla = s.get(SlaContract, f"sla-{agent_id}")
            assert sla is not None and sla.terms["p99_latency_ms"] == 2000
    pro_calls = [s for s in gw.seen if s.tool in ("submit_metrics", "register_service")]
    assert pro_calls and all(s.agent in agents for s in pro_calls), "as the agent, own key"
    assert [s.agent for s in gw.calls("withdraw")] == ["fleet-admin"] * 2, "operator key funds"
    assert [e["action"] for e in env.audit].count("provision_agent") == 2


def test_the_same_manifest_again_calls_nothing_at_the_gateway(make_env: Any) -> None:
    env = make_env()
    agents = env.provision(manifest())
    _import_pro_keys(env, agents)
    before = len(env.gateway.seen)
    again = pipeline.submit_job(env.deps, manifest(), "job-2", "test")
    assert again.to_dispatch == [] and again.already_active == 2
    assert len(env.gateway.seen) == before


def test_a_free_group_skips_the_pro_steps_and_says_why(make_env: Any) -> None:
    env = make_env()
    [agent_id] = env.provision(manifest(tier="free", count=1))
    agent = env.agent(agent_id)
    assert agent.status == AgentStatus.ACTIVE
    assert set(agent.extra["skipped"]) == {"metrics", "claims", "listing"}
    assert "group cs-triage is free" in agent.extra["skipped"]["claims"]
    assert agent.service_id is None and agent.claim_chain_id is None
    assert not env.gateway.calls("submit_metrics") and not env.gateway.calls("register_service")


def test_a_top_up_whose_answer_was_lost_is_replayed_not_credited_twice(make_env: Any) -> None:
    env = make_env()
    env.gateway.lose_answer["deposit"] = 1
    [agent_id] = env.provision(manifest(tier="free", count=1, balance="650.00"))
    assert env.agent(agent_id).status == AgentStatus.ACTIVE
    assert env.gateway.wallets[agent_id].balance == Decimal("650.00")
    deposits = env.gateway.calls("deposit")
    assert len(deposits) == 2 and deposits[0].idempotency_key == deposits[1].idempotency_key
    assert deposits[0].idempotency_key == f"job-1:{agent_id}:0:funding"


def test_an_id_that_exists_without_our_key_fails_and_is_left_alone(make_env: Any) -> None:
    env = make_env()
    agent_id = pipeline.submit_job(env.deps, manifest(tier="free", count=1), "job-1", "t")
    [theirs] = agent_id.to_dispatch
    env.gateway.register(theirs, "77.00")  # someone else's agent under the same id
    assert pipeline.provision_agent(env.deps, theirs) == AgentStatus.FAILED
    agent = env.agent(theirs)
    assert agent.failure_reason is not None and "we hold no key" in agent.failure_reason
    wallet = env.gateway.wallets[theirs]
    assert wallet.balance == Decimal("77.00") and not wallet.frozen, "not ours: untouched"
    assert [s.tool for s in env.gateway.seen] == ["register_agent"]


def test_a_registration_whose_answer_was_lost_waits_for_a_key_and_finishes_once_given_one(
    make_env: Any,
) -> None:
    env = make_env()
    # The gateway registers the agent, but its answer (the only carrier of the key) is lost.
    env.gateway.lose_answer["register_agent"] = 1
    [agent_id] = pipeline.submit_job(
        env.deps, manifest(tier="free", count=1), "job-1", "t"
    ).to_dispatch
    assert pipeline.provision_agent(env.deps, agent_id) == AgentStatus.AWAITING_KEY
    agent = env.agent(agent_id)
    assert "answer, which alone carries the key" in (agent.failure_reason or "")
    assert pipeline.REGISTER_SENT in agent.extra, "ours: we sent the registration"
    assert [s.tool for s in env.gateway.seen] == ["register_agent", "register_agent"]
    assert env.gateway.wallets[agent_id].balance == Decimal("500.00"), "nothing spent on it"

    pipeline.import_agent_key(env.deps, agent_id, env.gateway.mint(agent_id, "free"), "operator")
    assert pipeline.provision_agent(env.deps, agent_id) == AgentStatus.ACTIVE
    assert len(env.gateway.calls("deposit")) <= 1, "funded once"


def test_a_failed_step_sweeps_the_funds_to_the_treasury_and_freezes_the_wallet(
    make_env: Any,
) -> None:
    env = make_env()
    env.gateway.fail["set_budget_cap"] = [400]
    [agent_id] = env.provision(manifest(tier="free", count=1, balance="40.00"))
    agent = env.agent(agent_id)
    assert agent.status == AgentStatus.FAILED
    assert agent.failure_reason is not None and "step budget failed" in agent.failure_reason
    gw = env.gateway
    assert gw.wallets[agent_id].balance == Decimal("0.00") and gw.wallets[agent_id].frozen
    assert gw.wallets[TREASURY].balance == Decimal("40.00")
    assert "cannot be deleted at the gateway" in agent.extra["compensation"]["identity"]
    assert env.key_of(agent_id) is not None, "the identity remains, so its key is kept"
    # The next run goes on with the identity it holds: 409 with our key, wallet unfrozen.
    env.provision(manifest(tier="free", count=1, balance="40.00"), job_id="job-2")
    assert env.agent(agent_id).status == AgentStatus.ACTIVE
    assert gw.wallets[agent_id].balance == Decimal("40.00") and not gw.wallets[agent_id].frozen
    assert gw.wallets[TREASURY].balance == Decimal("40.00")


def test_a_compensation_cut_short_between_withdraw_and_deposit_loses_nothing(
    make_env: Any,
) -> None:
    env = make_env()
    env.gateway.fail["set_budget_cap"] = [400]
    env.gateway.fail["deposit"] = [503, 503]  # the treasury deposit, both attempts
    [agent_id] = env.provision(manifest(tier="free", count=1, balance="500.00"))
    assert env.agent(agent_id).status == AgentStatus.COMPENSATING
    assert env.gateway.wallets[agent_id].balance == Decimal("0.00")
    assert env.gateway.wallets[TREASURY].balance == Decimal("0.00")
    # resume_stalled re-dispatches it: the sweep goes on where it stopped
    assert pipeline.provision_agent(env.deps, agent_id) == AgentStatus.FAILED
    assert env.gateway.wallets[TREASURY].balance == Decimal("500.00")
    assert len(env.gateway.calls("withdraw")) == 1, "the withdraw was not repeated"
    assert env.gateway.wallets[agent_id].frozen


def test_with_on_missing_tier_fail_the_agent_fails_with_the_reason(make_env: Any) -> None:
    env = make_env(on_missing_tier="fail")
    [agent_id] = env.provision(manifest(count=1))
    agent = env.agent(agent_id)
    assert agent.status == AgentStatus.FAILED
    assert agent.failure_reason is not None and "needs a pro key" in agent.failure_reason
    assert env.gateway.wallets[agent_id].frozen


def test_a_key_is_imported_only_when_the_gateway_says_it_is_that_agents(make_env: Any) -> None:
    env = make_env()
    [a, b] = env.provision(manifest())
    with pytest.raises(Exception, match="403|forbidden|Forbidden"):
        pipeline.import_agent_key(env.deps, a, env.gateway.mint(b, "pro"), "operator")
    with pytest.raises(Exception, match="401|not found"):
        pipeline.import_agent_key(env.deps, a, "a2a_pro_" + "0" * 24, "operator")
    with pytest.raises(ValueError, match="not a gateway API key"):
        pipeline.import_agent_key(env.deps, a, "hunter2", "operator")
    assert env.agent(a).status == AgentStatus.AWAITING_KEY


def test_rotation_stores_the_new_key_and_keeps_the_old_one_for_the_grace_window(
    make_env: Any,
) -> None:
    env = make_env()
    [agent_id] = env.provision(manifest(tier="free", count=1))
    old = env.key_of(agent_id)
    env.clock.advance(91 * 86400)
    assert lifecycle.rotate_key(env.deps, agent_id)
    assert not lifecycle.rotate_key(env.deps, agent_id), "not due again"
    new = env.key_of(agent_id)
    assert new != old and new in env.gateway.live_keys(agent_id)
    [held] = env.agent(agent_id).extra["held_keys"]
    assert env.deps.vault.decrypt(held["key_encrypted"]) == old and held["valid_until"]
    assert [s.agent for s in env.gateway.calls("rotate_key")] == ["fleet-admin"]


def test_retirement_leaves_no_working_key_no_funds_no_listing_and_says_the_identity_remains(
    make_env: Any,
) -> None:
    env = make_env()
    agents = env.provision(manifest(count=1))
    _import_pro_keys(env, agents)
    [agent_id] = agents
    service_id = env.agent(agent_id).service_id
    status = lifecycle.retire_agent(
        env.deps, lifecycle.RetireDeps(inflight=lambda a: 0), agent_id, "scale down"
    )
    assert status == AgentStatus.RETIRED
    agent = env.agent(agent_id)
    gw = env.gateway
    assert agent.api_key_encrypted is None and agent.extra["held_keys"] == []
    assert agent.extra["retirement"]["keys_discarded"] == 2, "the imported pro and the free key"
    rotated_away = {s.body["current_key"] for s in gw.calls("rotate_key")}
    assert all(gw.keys[k].revoked_at is not None for k in rotated_away)
    assert gw.services[service_id or ""]["status"] == "inactive"
    assert gw.wallets[agent_id].balance == 0 and gw.wallets[agent_id].frozen
    assert gw.wallets[TREASURY].balance == Decimal("50.00")
    assert agent.failure_reason == "retired; identity remains at the gateway"
    assert agent_id in gw.identities
    assert [e["action"] for e in env.audit][-1] == "retire_agent"


def test_a_tier_upgrade_is_recorded_and_asks_for_an_imported_key(make_env: Any) -> None:
    env = make_env()
    [agent_id] = env.provision(manifest(tier="free", count=1))
    plan = lifecycle.plan_upgrade(env.deps, agent_id, "pro")
    assert (plan.current_monthly_cost, plan.projected_monthly_cost) == (
        Decimal("0.00"),
        Decimal("199.00"),
    )
    assert plan.needs_approval(env.deps.policy.scaling.tier_upgrade_approval_increase)
    told = lifecycle.record_upgrade_request(env.deps, plan, ["alice"])
    assert f"fleet keys import {agent_id}" in told
    assert env.agent(agent_id).extra["tier_request"]["new_tier"] == "pro"
    starter = lifecycle.UpgradePlan(agent_id, "starter", "pro", Decimal("29"), Decimal("199"))
    assert starter.needs_approval(2.0), "+586 % is above +200 %"
    assert not lifecycle.UpgradePlan(
        agent_id, "pro", "enterprise", Decimal("199"), Decimal("416.67")
    ).needs_approval(2.0)


def test_a_worker_killed_mid_agent_resumes_after_its_last_step_without_moving_money_again(
    make_env: Any,
) -> None:
    env = make_env()
    submitted = pipeline.submit_job(env.deps, manifest(tier="free", count=1), "job-1", "t")
    [agent_id] = submitted.to_dispatch
    real_run = env.client.run

    def killed_at_budget(op: Any, **kw: Any) -> Any:
        if op.name == "set_budget_cap":
            raise SystemExit("worker killed")
        return real_run(op, **kw)

    env.deps.gateway = cast(Any, type("Killed", (), {"run": staticmethod(killed_at_budget)}))
    with pytest.raises(SystemExit):
        pipeline.provision_agent(env.deps, agent_id)
    assert env.agent(agent_id).steps_done == ["register", "identity", "funding"]
    env.deps.gateway = env.client  # the message is redelivered to a live worker
    assert pipeline.provision_agent(env.deps, agent_id) == AgentStatus.ACTIVE
    assert len(env.gateway.calls("register_agent")) == 1
    assert len(env.gateway.calls("withdraw")) == 1
    assert env.gateway.wallets[agent_id].balance == Decimal("50.00")


def test_retiring_an_agent_frozen_by_tier_4_still_sweeps_its_funds_and_refreezes(
    make_env: Any,
) -> None:
    env = make_env()
    [agent_id] = env.provision(manifest(tier="free", count=1, balance="30.00"))
    env.gateway.wallets[agent_id].frozen = True
    status = lifecycle.retire_agent(
        env.deps, lifecycle.RetireDeps(inflight=lambda a: 0), agent_id, "frozen for good"
    )
    assert status == AgentStatus.RETIRED
    assert env.gateway.wallets[TREASURY].balance == Decimal("30.00")
    assert env.gateway.wallets[agent_id].balance == 0 and env.gateway.wallets[agent_id].frozen
    assert len(env.gateway.calls("unfreeze_wallet")) == 1, "unfrozen only to sweep it"


def test_each_agent_gets_an_identity_key_we_hold_encrypted_and_the_gateway_holds_its_public_half(
    make_env: Any,
) -> None:
    env = make_env()
    # The gateway processes the first set but its answer is lost: the retry sets the same key.
    env.gateway.lose_answer["register_identity"] = 1
    [agent_id] = env.provision(manifest(tier="free", count=1))
    agent = env.agent(agent_id)
    assert agent.status == AgentStatus.ACTIVE
    token = agent.extra[identity.ENCRYPTED]
    private = load_private_key(env.deps.vault.decrypt(token))
    assert private_key_hex(private) not in str(agent.extra)  # only encrypted at rest
    ours = public_key_hex(private)
    assert agent.extra["public_key"] == ours == env.gateway.identities[agent_id]
    sets = env.gateway.calls("register_identity")
    assert len(sets) == 2 and {c.body["public_key"] for c in sets} == {ours}

    exported = pipeline.export_identity_key(env.deps, agent_id, "deployer")
    assert exported == private_key_hex(private)
    assert env.audit[-1]["action"] == "export_identity_key"
    assert env.audit[-1]["details"] == {"public_key": ours, "by": "deployer"}
    assert exported not in str(env.audit)


def test_the_identity_step_fails_when_the_gateway_keeps_another_key(make_env: Any) -> None:
    env = make_env()

    def keeps_its_own(key: Any, body: dict[str, Any], q: Any) -> Any:
        return 201, {"agent_id": body["agent_id"]}

    env.gateway.h_set_identity = keeps_its_own  # type: ignore[method-assign]
    [agent_id] = env.provision(manifest(tier="free", count=1))
    agent = env.agent(agent_id)
    assert agent.status == AgentStatus.FAILED
    assert "does not hold" in (agent.failure_reason or "")
    assert "public_key" not in agent.extra


def test_an_agent_provisioned_before_identity_keys_has_none_to_export(make_env: Any) -> None:
    env = make_env()
    [agent_id] = env.provision(manifest(tier="free", count=1))
    with env.deps.sessions.begin() as s:
        row = s.get(Agent, agent_id)
        assert row is not None
        row.extra = {k: v for k, v in row.extra.items() if k != identity.ENCRYPTED}
    with pytest.raises(identity.NoIdentityKey, match="no identity key is held"):
        pipeline.export_identity_key(env.deps, agent_id, "deployer")


def test_a_worker_killed_after_setting_the_identity_key_sets_the_same_one_again(
    make_env: Any,
) -> None:
    env = make_env()
    submitted = pipeline.submit_job(env.deps, manifest(tier="free", count=1), "job-1", "t")
    [agent_id] = submitted.to_dispatch
    real_run = env.client.run

    def killed_after_set(op: Any, **kw: Any) -> Any:
        if op.name == "get_agent_identity":
            raise SystemExit("worker killed")
        return real_run(op, **kw)

    env.deps.gateway = cast(Any, type("Killed", (), {"run": staticmethod(killed_after_set)}))
    with pytest.raises(SystemExit):
        pipeline.provision_agent(env.deps, agent_id)
    assert env.agent(agent_id).steps_done == ["register"]
    env.deps.gateway = env.client
    assert pipeline.provision_agent(env.deps, agent_id) == AgentStatus.ACTIVE
    sets = {c.body["public_key"] for c in env.gateway.calls("register_identity")}
    assert sets == {env.agent(agent_id).extra["public_key"]}


def test_a_tier_upgrade_plan_counts_the_agents_real_daily_spend_from_the_ledger(
    make_env: Any,
) -> None:
    from fleet.budgets.models import SpendEntry

    env = make_env()
    [agent_id] = env.provision(manifest(tier="starter", count=1))
    threshold = env.deps.policy.scaling.tier_upgrade_approval_increase
    by_price = lifecycle.plan_upgrade(env.deps, agent_id, "pro")
    # Its key is the gateway's free one: by the tier prices alone 0 → 199, an infinite rise.
    assert by_price.current_tier == "free" and by_price.daily_cost == 0
    assert by_price.needs_approval(threshold)

    now = env.clock.now()

    def spent(task: str, amount: str, hours_ago: float) -> SpendEntry:
        at = now - timedelta(hours=hours_ago)
        return SpendEntry(
            task_id=task, agent_id=agent_id, fleet="support", model="mid", estimate=amount,
            actual=amount, currency="USD", usage={}, reserved_at=at, settled_at=at,
        )  # fmt: skip

    with env.deps.sessions.begin() as s:
        s.add_all([spent("t1", "4.00", 1), spent("t2", "6.00", 23), spent("old", "99.00", 25)])
    plan = lifecycle.plan_upgrade(env.deps, agent_id, "pro")
    # 10.00 a day over the last 24 h (the 25 h old spend is out), × 30 on both sides.
    assert plan.daily_cost == Decimal("10.00") and plan.ledger_entries == 2
    assert plan.current_monthly_cost == Decimal("0.00") + Decimal("300.00")
    assert plan.projected_monthly_cost == Decimal("199.00") + Decimal("300.00")
    assert not plan.needs_approval(threshold), "300 → 499 is +66.3 %"
    details = plan.as_details()
    assert details["increase_pct"] == "66.3"
    assert details["ledger_daily_cost"] == "10.00" and details["monthly_usage_cost"] == "300.00"
    assert details["current_tier_price"] == "0.00" and details["new_tier_price"] == "199.00"
