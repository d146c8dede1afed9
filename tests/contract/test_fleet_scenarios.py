"""What matters to a fleet, done by Fleet Commander's own code and checked with the gateway's reads.

Each scenario drives the domain functions (provisioning, key import, the sweep's poller,
escalation tiers, release, rotation, retirement) through ``commander`` and then asks the
gateway under test, over raw httpx with the admin key or the agent's own key, whether the
effect is there. Money is read from the raw answers as exact Decimals, whatever JSON type
the gateway chose for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from fleet.approvals.release import release_agent
from fleet.gateway import GatewayClient, GatewayConfig, StaticKeyRing
from fleet.gateway import operations as ops
from fleet.gateway.errors import BudgetExceeded
from fleet.gateway.keys import Auth
from fleet.monitoring.heartbeats import (
    EVENT_TYPE,
    HeartbeatMetrics,
    load_private_key,
    load_public_key,
    public_key_hex,
    signed_bytes,
    verify_heartbeat,
)
from fleet.monitoring.poller import SweepPoller
from fleet.monitoring.publisher import HeartbeatPublisher
from fleet.provisioning import lifecycle, pipeline
from fleet.sla.models import RESOLVE_TIER, DisputeStatus, SlaDispute
from fleet.storage.records import AgentStatus
from tests.contract.commander import OPERATOR_BY, Commander, money
from tests.contract.conftest import GatewayUnderTest

# The gateway's grace for a rotated-out key is announced in the rotation's answer; past its
# end the key must be refused. A little slack covers clock granularity (epoch seconds).
GRACE_SLACK_S = 3.0
SLOW_TIMEOUT_S = 600


def body(answer: httpx.Response) -> Any:
    return answer.json(parse_float=Decimal)


def problem(answer: httpx.Response) -> str:
    """The problem type's code (``.../errors/wallet-frozen`` → ``wallet-frozen``)."""
    try:
        return str(answer.json().get("type", "")).rsplit("/", 1)[-1]
    except ValueError:
        return ""


def balance(gateway: GatewayUnderTest, agent_id: str) -> Decimal:
    with gateway.admin() as admin:
        answer = admin.get(f"/v1/billing/wallets/{agent_id}/balance")
    assert answer.status_code == 200, answer.text
    return money(body(answer)["balance"])


def deposit(gateway: GatewayUnderTest, agent_id: str, amount: str) -> httpx.Response:
    with gateway.admin() as admin:
        return admin.post(
            f"/v1/billing/wallets/{agent_id}/deposit",
            json={"amount": amount, "description": "contract suite: is the wallet open?"},
        )


def key_answers(gateway: GatewayUnderTest, agent_id: str, key: str) -> int:
    """The status the gateway gives a read of the agent's own wallet with ``key``."""
    with gateway.http(key) as http:
        return http.get(f"/v1/billing/wallets/{agent_id}/balance").status_code


# ---------------------------------------------------------------- 1. provisioning


def test_a_pro_agent_provisioned_end_to_end_is_found_at_the_gateway(
    commander: Commander, gateway: GatewayUnderTest, new_agent_id: Callable[[str], str]
) -> None:
    c = commander
    agent_id = c.submit(new_agent_id("e2e"), tier="pro", balance="50.00")
    waiting = c.agent(agent_id)
    assert waiting.status == AgentStatus.AWAITING_KEY, (waiting.status, waiting.failure_reason)
    assert waiting.steps_done == ["register", "identity", "funding", "budget"]
    assert "needs a pro key; the agent holds a free key" in (waiting.failure_reason or "")

    imported = c.import_pro_key(agent_id)
    assert (imported.tier, imported.redispatch) == ("pro", True)
    assert pipeline.provision_agent(c.deps, agent_id) == AgentStatus.ACTIVE
    agent = c.agent(agent_id)
    assert agent.steps_done == list(pipeline.STEPS)

    with gateway.admin() as admin, gateway.http(c.key_of(agent_id)) as own:
        identity = admin.get(f"/v1/identity/agents/{agent_id}")
        assert identity.status_code == 200, identity.text
        assert body(identity)["public_key"] == agent.extra["public_key"], "the key we recorded"

        wallet = own.get(f"/v1/billing/wallets/{agent_id}/balance")
        assert wallet.status_code == 200, wallet.text
        assert money(body(wallet)["balance"]) == Decimal("50.00"), "the manifest's balance"
        assert wallet.headers["X-RateLimit-Limit"] == "10000", "read with the imported pro key"

        budget = body(own.get(f"/v1/billing/wallets/{agent_id}/budget"))
        cap = c.policy.provisioning.budget_cap
        assert money(budget["daily_cap"]) == cap.daily
        assert money(budget["monthly_cap"]) == cap.monthly

        claims = body(admin.get(f"/v1/identity/agents/{agent_id}/claims"))["claims"]
        terms = c.policy.sla_templates["standard-support"]
        expected = pipeline.metric_claims(terms)
        bounds = {cl["metric_name"]: money(cl["bound_value"]) for cl in claims}
        assert bounds == expected, "the SLA template's targets, as metric claims"

        chains = body(admin.get(f"/v1/identity/agents/{agent_id}/claim-chains"))["chains"]
        assert agent.claim_chain_id in [str(ch["id"]) for ch in chains]
        assert agent.extra["merkle_root"] in [ch["merkle_root"] for ch in chains]

        found = body(admin.get("/v1/marketplace/services", params={"query": agent_id}))
        assert agent.service_id in [svc["id"] for svc in found["services"]]
        listing = body(admin.get(f"/v1/marketplace/services/{agent.service_id}"))
        assert listing["status"] == "active"
        assert listing["name"] == agent_id and agent_id in listing["tags"]


def test_our_identity_key_is_the_agents_at_the_gateway_and_its_signed_heartbeats_verify_there(
    commander: Commander, gateway: GatewayUnderTest, new_agent_id: Callable[[str], str]
) -> None:
    c = commander
    agent_id = c.provision(new_agent_id("idk"), tier="free", balance="10.00")
    recorded = c.agent(agent_id).extra["public_key"]
    private = load_private_key(pipeline.export_identity_key(c.deps, agent_id, OPERATOR_BY))
    assert public_key_hex(private) == recorded

    config = GatewayConfig(url=gateway.base_url, max_attempts=2)
    with GatewayClient(config, StaticKeyRing(agents={agent_id: c.key_of(agent_id)})) as own:
        publisher = HeartbeatPublisher(own, agent_id, private, interval_s=60)
        sent = publisher.publish(HeartbeatMetrics(latency_p99_ms=820, error_rate=0.01))

    with gateway.admin() as admin:
        identity = body(admin.get(f"/v1/identity/agents/{agent_id}"))
        assert identity["public_key"] == recorded, "ours, not the one registration made"
        events = admin.get(
            "/v1/infra/events",
            params={"event_type": EVENT_TYPE, "since_id": sent.event_id - 1, "limit": 1},
        ).json()["events"]
        assert [e["id"] for e in events] == [sent.event_id]
        payload = events[0]["payload"]
        assert verify_heartbeat(agent_id, payload, load_public_key(identity["public_key"]))
        # The gateway's own Ed25519 check agrees: it holds the key the agent signs with.
        message = signed_bytes(payload).decode()
        verdict = admin.post(
            f"/v1/identity/agents/{agent_id}/verify",
            json={"message": message, "signature": payload["sig"]},
        )
        assert verdict.status_code == 200 and body(verdict) == {"valid": True}, verdict.text
        forged = admin.post(
            f"/v1/identity/agents/{agent_id}/verify",
            json={"message": message.replace("820", "821"), "signature": payload["sig"]},
        )
        assert body(forged) == {"valid": False}


# ---------------------------------------------------------------- 2. the sweep's reads
# ---------------------------------------------------------------- 2. the wallet poll's reads


def test_the_wallet_poll_reads_balance_and_budget_as_the_gateway_answers_them(
    commander: Commander, gateway: GatewayUnderTest, new_agent_id: Callable[[str], str]
) -> None:
    c = commander
    agent_id = c.provision(new_agent_id("reads"), tier="free", balance="75.25")

    poller = SweepPoller(GatewayConfig(url=gateway.base_url), in_flight=4, keys=c.client.keys)
    try:
        # Through the agent's own key (its window), then through the admin key.
        own_read, admin_read = (poller.poll([(agent_id, via)])[0] for via in (False, True))
    finally:
        poller.close()

    with gateway.http(c.key_of(agent_id)) as own:
        raw_balance = body(own.get(f"/v1/billing/wallets/{agent_id}/balance"))
        raw_budget = body(own.get(f"/v1/billing/wallets/{agent_id}/budget"))
    for reading in (own_read, admin_read):
        assert not reading.failed, reading.errors
        assert reading.balance is not None and reading.budget is not None
        assert reading.balance.balance == money(raw_balance["balance"]) == Decimal("75.25")
        assert reading.budget.daily_cap == money(raw_budget["daily_cap"])
        assert reading.budget.daily_spend == money(raw_budget["daily_spend"])
        assert reading.budget.cap_exceeded is raw_budget["cap_exceeded"]
        # Reads are free at the gateway (X-Charged 0.00), and none was refused.
        assert (reading.calls, reading.charged, reading.rate_limited) == (2, Decimal(0), 0)


# ---------------------------------------------------------------- 3. the budget cap


def test_a_tiny_daily_cap_refuses_the_next_paid_call_with_402_budget_exceeded(
    commander: Commander, gateway: GatewayUnderTest, new_agent_id: Callable[[str], str]
) -> None:
    c = commander
    agent_id = c.provision(new_agent_id("cap"), tier="free", balance="20.00")
    c.client.run(ops.set_budget(agent_id, Decimal("0.25"), Decimal("1.00"), Decimal("0.8")))

    # best_match costs 0.10, charged to the caller: our agent, with its own key.
    paid = 0
    with pytest.raises(BudgetExceeded) as refused:
        for _ in range(10):
            c.client.run(ops.best_match("text-classification", auth=Auth.own(agent_id)))
            paid += 1
    assert paid == 2, "0.20 spent; another 0.10 would pass the 0.25 cap"
    assert refused.value.status == 402

    with gateway.http(c.key_of(agent_id)) as own:
        again = own.get("/v1/marketplace/match", params={"query": "text-classification"})
        budget = body(own.get(f"/v1/billing/wallets/{agent_id}/budget"))
    assert again.status_code == 402 and problem(again) == "budget-exceeded", again.text
    assert money(budget["daily_cap"]) == Decimal("0.25")
    assert money(budget["daily_spend"]) == Decimal("0.20")


# ---------------------------------------------------------------- 4. freeze and release


def test_tier_4_freezes_the_wallet_at_the_gateway_and_an_approved_release_reopens_it(
    commander: Commander, gateway: GatewayUnderTest, new_agent_id: Callable[[str], str]
) -> None:
    c = commander
    agent_id = c.provision(new_agent_id("freeze"), tier="free", balance="30.00")
    episode = c.open_episode(agent_id)
    outcome = c.escalate(episode, 4)
    assert outcome.status == "done", outcome.result
    assert outcome.result["wallet_frozen"] is True
    assert c.agent(agent_id).status == AgentStatus.PAUSED

    refused = deposit(gateway, agent_id, "1.00")
    assert refused.status_code == 403 and problem(refused) == "wallet-frozen", refused.text
    with gateway.http(c.key_of(agent_id)) as own:
        own_refused = own.post(f"/v1/billing/wallets/{agent_id}/deposit", json={"amount": "1.00"})
    assert own_refused.status_code == 403 and problem(own_refused) == "wallet-frozen"
    assert balance(gateway, agent_id) == Decimal("30.00"), "a frozen wallet is still readable"

    request_id = outcome.result["release_request"]
    c.actions.approvals.approve(request_id, "contract-approver")
    assert release_agent(
        c.actions.approvals,
        c.deps.sessions,
        c.client,
        request_id=request_id,
        agent_id=agent_id,
    )
    accepted = deposit(gateway, agent_id, "1.00")
    assert accepted.status_code == 200, accepted.text
    assert money(body(accepted)["new_balance"]) == Decimal("31.00")
    assert c.agent(agent_id).status == AgentStatus.ACTIVE

    with gateway.admin() as admin:
        inbox = body(admin.get("/v1/messaging/messages", params={"agent_id": c.operator}))
    notices = [m for m in inbox["messages"] if agent_id in (m.get("subject") or "")]
    assert any("frozen (tier 4)" in m["subject"] for m in notices), inbox


# ---------------------------------------------------------------- 5. disputes


def test_a_held_escrow_is_disputed_by_our_agent_and_refunded_when_the_admin_resolves_it(
    commander: Commander, gateway: GatewayUnderTest, new_agent_id: Callable[[str], str]
) -> None:
    c = commander
    payer = c.provision(new_agent_id("payer"), tier="pro", balance="50.00")
    payee = c.provision(new_agent_id("payee"), tier="pro", balance="10.00")
    escrow = c.client.run(ops.create_escrow(payer, payee, Decimal("20.00")))
    c.record_escrow(payer, payee, str(escrow.id))
    after_escrow = balance(gateway, payer)

    episode = c.open_episode(payer, counterparty=payee)
    opened = c.escalate(episode, 3)
    assert opened.status == "done", opened.result
    dispute_id = opened.result["dispute_id"]
    with gateway.admin() as admin:
        dispute = body(admin.get(f"/v1/disputes/{dispute_id}"))
        assert dispute["status"] == "open" and dispute["opener"] == payer
        assert dispute["escrow_id"] == str(escrow.id)

        c.close_episode(episode)
        resolved = c.escalate(episode, RESOLVE_TIER)
        assert resolved.status == "done", resolved.result
        assert resolved.result["disputes_resolved"] == [dispute_id]

        dispute = body(admin.get(f"/v1/disputes/{dispute_id}"))
        held = body(admin.get(f"/v1/payments/escrows/{escrow.id}"))
    assert dispute["status"] == "resolved"
    assert dispute["resolution"] == c.policy.disputes.resolution == "refund"
    assert held["status"] == "refunded"
    assert balance(gateway, payer) == after_escrow + Decimal("20.00"), "the escrow came back"
    with c.deps.sessions() as s:
        row = s.get(SlaDispute, dispute_id)
        assert row is not None and row.status == DisputeStatus.RESOLVED


# ---------------------------------------------------------------- 6 and 7: keys that die later


@dataclass(frozen=True)
class DyingKeys:
    """Keys the gateway must refuse once ``dead_after`` (epoch seconds) has passed."""

    agent_id: str
    keys: tuple[str, ...]
    dead_after: float


@pytest.fixture(scope="module")
def rotated(commander: Commander, gateway: GatewayUnderTest, run_prefix: str) -> DyingKeys:
    c = commander
    agent_id = c.provision(f"{run_prefix}-rotate", tier="free", balance="5.00")
    old_key = c.key_of(agent_id)
    assert not lifecycle.rotate_key(c.deps, agent_id), "a fresh key is not due"
    c.backdate_key(agent_id, c.policy.provisioning.key_rotation_days + 1)
    assert agent_id in lifecycle.keys_due(c.deps)
    assert lifecycle.rotate_key(c.deps, agent_id)
    [held] = c.agent(agent_id).extra["held_keys"]
    dead_after = _epoch(held["valid_until"])
    return DyingKeys(agent_id, (old_key,), dead_after)


@pytest.fixture(scope="module")
def retired(commander: Commander, gateway: GatewayUnderTest, run_prefix: str) -> Iterator[Any]:
    c = commander
    agent_id = c.provision(f"{run_prefix}-retire", tier="pro", balance="42.50")
    agent = c.agent(agent_id)
    keys = tuple(c.held_keys(agent_id))
    assert len(keys) == 2, "the registration's free key and the imported pro key"
    treasury_before = balance(gateway, c.treasury)
    status = lifecycle.retire_agent(
        c.deps, lifecycle.RetireDeps(inflight=lambda _: 0), agent_id, "contract suite"
    )
    assert status == AgentStatus.RETIRED
    facts = c.agent(agent_id).extra["retirement"]
    assert facts["keys_discarded"] == 2, facts
    dead_after = _epoch(facts["keys_dead_after"])
    yield agent, DyingKeys(agent_id, keys, dead_after), treasury_before


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_a_rotated_key_is_replaced_and_the_old_one_works_through_the_overlap(
    commander: Commander, gateway: GatewayUnderTest, rotated: DyingKeys
) -> None:
    c = commander
    new_key = c.key_of(rotated.agent_id)
    assert new_key not in rotated.keys
    assert key_answers(gateway, rotated.agent_id, new_key) == 200
    if time.time() < rotated.dead_after - GRACE_SLACK_S:
        [old_key] = rotated.keys
        assert key_answers(gateway, rotated.agent_id, old_key) == 200, "inside the overlap"
    grace = rotated.dead_after - time.time()
    assert 0 < grace <= c.policy.provisioning.key_overlap_s + GRACE_SLACK_S


def test_retirement_delists_sweeps_to_the_treasury_freezes_and_leaves_the_identity(
    commander: Commander, gateway: GatewayUnderTest, retired: Any
) -> None:
    c = commander
    agent, _, treasury_before = retired
    agent_id = agent.agent_id
    record = c.agent(agent_id)
    assert record.status == AgentStatus.RETIRED
    assert record.api_key_encrypted is None, "nobody holds a working key"

    with gateway.admin() as admin:
        listing = body(admin.get(f"/v1/marketplace/services/{agent.service_id}"))
        found = body(admin.get("/v1/marketplace/services", params={"query": agent_id}))
        identity = admin.get(f"/v1/identity/agents/{agent_id}")
    assert listing["status"] == "inactive"
    assert agent.service_id not in [svc["id"] for svc in found["services"]]

    assert balance(gateway, agent_id) == Decimal("0.00")
    assert balance(gateway, c.treasury) - treasury_before == Decimal("42.50"), "swept in full"

    refused = deposit(gateway, agent_id, "1.00")
    assert refused.status_code == 403 and problem(refused) == "wallet-frozen", refused.text

    assert identity.status_code == 200, (
        "the gateway has no deregistration: a retired agent's identity remains there "
        f"({identity.status_code} {identity.text[:200]})"
    )
    assert body(identity)["public_key"] == agent.extra["public_key"]
    assert record.failure_reason == lifecycle.RETIRED_NOTE


def _wait_until(deadline: float) -> None:
    while (left := deadline - time.time()) > 0:
        time.sleep(min(left, 5.0))


@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT_S)
def test_the_old_key_is_refused_once_the_overlap_ends(
    gateway: GatewayUnderTest, rotated: DyingKeys, commander: Commander
) -> None:
    _wait_until(rotated.dead_after + GRACE_SLACK_S)
    [old_key] = rotated.keys
    assert key_answers(gateway, rotated.agent_id, old_key) == 401
    assert key_answers(gateway, rotated.agent_id, commander.key_of(rotated.agent_id)) == 200


@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT_S)
def test_a_retired_agents_keys_are_all_refused_once_the_overlap_ends(
    gateway: GatewayUnderTest, retired: Any
) -> None:
    _, dying, _ = retired
    _wait_until(dying.dead_after + GRACE_SLACK_S)
    statuses = [key_answers(gateway, dying.agent_id, key) for key in dying.keys]
    assert statuses == [401] * len(dying.keys), "every key we ever held for it is dead"
