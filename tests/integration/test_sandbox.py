"""The gateway sandbox over real HTTP: protocol, state, simulated fleet, faults, counters."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.control import SandboxError
from sandbox.tools import TOOLS
from tests.conftest import SandboxProcess

pytestmark = pytest.mark.integration

ADMIN = "sandbox-admin-key"


def uid(prefix: str = "t") -> str:
    return f"{prefix}-0001-{uuid.uuid4().hex[:8]}"


# One pooled client for the module: a fresh client per call costs more than the call.
_http = httpx.Client(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    _http.close()


def post(
    sb: SandboxProcess, tool: str, key: str | None = ADMIN, /, *, raw: Any = None, **inp: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    body = raw if raw is not None else {"tool": tool, "input": inp}
    return _http.post(sb.gateway_url, json=body, headers=headers)


def ok(sb: SandboxProcess, tool: str, key: str = ADMIN, /, **inp: Any) -> dict[str, Any]:
    r = post(sb, tool, key, **inp)
    assert r.status_code == 200, r.text
    return r.json()


def error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert (
        set(body) == {"error"}
        and isinstance(body["error"]["code"], str)
        and body["error"]["message"]
    )
    return body["error"]


def new_agent(
    sb: SandboxProcess, *, balance: str | None = None, profile: str | None = "idle", **extra: Any
) -> tuple[str, str]:
    """A registered agent (pinned to ``profile`` so its wallet does not drift) and its key."""
    agent_id = uid()
    reg = ok(
        sb,
        "register_agent",
        agent_id=agent_id,
        tier="starter",
        capabilities=["summarise"],
        metadata={"fleet": "t"},
        **extra,
    )
    if profile is not None:
        sb.set_profile(agent_id, profile)
    if balance is not None:
        ok(sb, "create_wallet", agent_id=agent_id, initial_balance=balance)
    return agent_id, reg["api_key"]


@pytest.fixture
def sb(sandbox: SandboxProcess) -> SandboxProcess:
    sandbox.reset()
    return sandbox


# --- protocol ------------------------------------------------------------------------------


def test_missing_or_wrong_key_is_401_on_tools_and_admin_api(sb: SandboxProcess) -> None:
    error(post(sb, "get_balance", None, agent_id="x-1"), 401)
    error(post(sb, "get_balance", "not-a-key", agent_id="x-1"), 401)
    r = httpx.get(sb.url + "/_sandbox/state", headers={"Authorization": "Bearer nope"})
    assert error(r, 401)["code"] == "unauthorized"
    r = httpx.get(sb.url + "/_sandbox/state")
    error(r, 401)


def test_agent_key_acts_only_for_its_agent_and_rotation_keeps_old_key_for_overlap(
    sb: SandboxProcess,
) -> None:
    a, key_a = new_agent(sb, balance="5.00")
    b, _ = new_agent(sb, balance="5.00")
    assert ok(sb, "get_balance", key_a, agent_id=a)["balance"] == "5.00"
    assert error(post(sb, "get_balance", key_a, agent_id=b), 403)["code"] == "forbidden"
    # New identities and fleet-wide tools need the admin key.
    error(post(sb, "register_agent", key_a, agent_id=uid(), tier="free"), 403)
    error(
        post(sb, "get_compliance_report", key_a, fleet_prefix="t-", period="30d", articles=[12]),
        403,
    )

    rotated = ok(sb, "register_agent", key_a, agent_id=a, rotate_key=True)
    new_key = rotated["api_key"]
    assert new_key != key_a and rotated["tier"] == "starter"
    assert (
        ok(sb, "get_balance", key_a, agent_id=a)["balance"] == "5.00"
    )  # old key inside the overlap
    assert ok(sb, "get_balance", new_key, agent_id=a)["balance"] == "5.00"
    sb.advance_clock(61)  # default overlap is 60 s
    error(post(sb, "get_balance", key_a, agent_id=a), 401)
    assert ok(sb, "get_balance", new_key, agent_id=a)["agent_id"] == a

    upgraded = ok(sb, "register_agent", agent_id=a, tier="pro", upgrade=True)
    assert upgraded["tier"] == "pro" and upgraded["previous_tier"] == "starter"
    assert sb.agent(a)["tier"] == "pro"


@pytest.mark.parametrize(
    ("tool", "inp", "field"),
    [
        ("register_agent", {"tier": "free"}, "agent_id"),
        ("register_agent", {"agent_id": "bad id!", "tier": "free"}, "agent_id"),
        ("register_agent", {"agent_id": "ok-1", "tier": "platinum"}, "tier"),
        (
            "register_agent",
            {"agent_id": "ok-1", "tier": "free", "capabilities": "x"},
            "capabilities",
        ),
        ("create_wallet", {"agent_id": "ok-1", "initial_balance": 50.0}, "initial_balance"),
        ("create_wallet", {"agent_id": "ok-1", "initial_balance": "1e3"}, "initial_balance"),
        (
            "record_transaction",
            {"agent_id": "ok-1", "task_id": "t", "tool": "x", "cost": "-1.00"},
            "cost",
        ),
        ("record_transaction", {"agent_id": "ok-1", "tool": "x", "cost": "1.00"}, "task_id"),
        (
            "convert_currency",
            {"amount": "1.00", "from_currency": "USD", "to_currency": "XXX"},
            "to_currency",
        ),
        ("get_analytics", {"agent_id": "ok-1", "metrics": ["latency_p99", "vibes"]}, "metrics[1]"),
        ("get_analytics", {"agent_id": "ok-1", "time_range": "forever"}, "time_range"),
        (
            "create_sla",
            {"agent_id": "ok-1", "terms": {"p99_latency_ms": 500, "speed": 1}},
            "terms.speed",
        ),
        (
            "create_sla",
            {"agent_id": "ok-1", "terms": {"max_cost_per_task": 0.05}},
            "terms.max_cost_per_task",
        ),
        (
            "transfer_funds",
            {"from_agent_id": "ok-1", "to": "fleet-treasury", "amount": 5},
            "amount",
        ),
        ("search_services", {"capabilities": ["x"], "min_reputation": 2}, "min_reputation"),
        (
            "get_compliance_report",
            {"fleet_prefix": "t", "period": "30d", "articles": [10]},
            "articles[0]",
        ),
        ("send_message", {"to": "ops", "subject": "s", "body": "b", "priority": "meh"}, "priority"),
        ("estimate_cost", {"tool_name": "get_balance", "input_size": -1}, "input_size"),
    ],
)
def test_bad_input_is_400_naming_the_field(
    sb: SandboxProcess, tool: str, inp: dict[str, Any], field: str
) -> None:
    err = error(post(sb, tool, **inp), 400)
    assert err["code"] == "invalid_input"
    assert err["field"] == field
    assert f"input.{field}" in err["message"]


def test_malformed_envelopes_are_400(sb: SandboxProcess) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    r = httpx.post(sb.gateway_url, content=b"{not json", headers=headers)
    assert error(r, 400)["code"] == "invalid_json"
    assert error(post(sb, "", raw={"tool": 7, "input": {}}), 400)["field"] == "tool"
    assert error(post(sb, "", raw={"tool": "get_balance", "input": [1]}), 400)["field"] == "input"


def test_unknown_tool_and_unknown_agent_are_404(sb: SandboxProcess) -> None:
    assert error(post(sb, "mint_money"), 404)["code"] == "unknown_tool"
    for tool in (
        "get_balance",
        "get_analytics",
        "check_sla_compliance",
        "create_wallet",
        "deregister_agent",
    ):
        err = error(post(sb, tool, agent_id="ghost-0001-00000000"), 404)
        assert err["code"] == "agent_not_found", tool
    agent, _ = new_agent(sb)
    assert error(post(sb, "get_balance", agent_id=agent), 404)["code"] == "wallet_not_found"
    assert error(post(sb, "check_sla_compliance", agent_id=agent), 404)["code"] == "sla_not_found"
    assert (
        error(post(sb, "resolve_dispute", dispute_id="dsp_nope", resolution="x"), 404)["code"]
        == "dispute_not_found"
    )


def test_duplicate_register_is_409_and_a_deregistered_id_can_return(sb: SandboxProcess) -> None:
    agent, _ = new_agent(sb, balance="0.00")
    assert (
        error(post(sb, "register_agent", agent_id=agent, tier="free"), 409)["code"]
        == "agent_exists"
    )
    assert (
        error(post(sb, "create_wallet", agent_id=agent, initial_balance="1.00"), 409)["code"]
        == "wallet_exists"
    )
    ok(sb, "freeze_wallet", agent_id=agent, reason="retire")
    out = ok(sb, "deregister_agent", agent_id=agent, reason="retired")
    assert out == {**out, "agent_id": agent, "status": "deregistered"}
    error(post(sb, "get_balance", agent_id=agent), 404)
    assert sb.state()["orphans"]["count"] == 0  # frozen and empty: properly retired
    again = ok(sb, "register_agent", agent_id=agent, tier="free")
    assert again["agent_id"] == agent
    state = sb.state()
    assert state["agents"]["live"] == 1 and state["agents"]["deregistered"] == 1


# --- money ---------------------------------------------------------------------------------


def test_transactions_and_transfers_move_money_exactly(sb: SandboxProcess) -> None:
    a, _ = new_agent(sb, balance="50.00")
    b, _ = new_agent(sb, balance="0.00")
    tx = ok(
        sb,
        "record_transaction",
        agent_id=a,
        task_id="task-1",
        tool="summarise",
        cost="1.25",
        timestamp="2026-01-01T00:00:00Z",
    )
    assert tx["transaction_id"] and tx["balance"] == "48.75"
    ok(sb, "record_transaction", agent_id=a, task_id="task-2", tool="summarise", cost="0.001")
    assert ok(sb, "get_balance", agent_id=a)["balance"] == "48.749"

    err = error(
        post(sb, "record_transaction", agent_id=a, task_id="t3", tool="x", cost="100.00"), 409
    )
    assert err["code"] == "insufficient_funds"
    assert ok(sb, "get_balance", agent_id=a)["balance"] == "48.749"  # refused: nothing moved

    ok(sb, "transfer_funds", from_agent_id=a, to=b, amount="8.749")
    moved = ok(sb, "transfer_funds", from_agent_id=a, to="fleet-treasury", amount="10.00")
    assert moved["to_wallet_id"] == "fleet-treasury" and moved["balance"] == "30.00"
    assert ok(sb, "get_balance", agent_id=b)["balance"] == "8.749"
    wallets = sb.state()["wallets"]
    assert wallets["treasury"] == 1 and wallets["treasury_balance"] == "10.00"
    assert Decimal(wallets["total_balance"]) == Decimal("38.749")
    balance = ok(sb, "get_balance", agent_id=a)
    assert isinstance(balance["balance"], str) and isinstance(balance["burn_rate_per_hour"], str)
    # The recorded 1.251 counts towards this hour's burn (an idle agent burns nothing else).
    assert Decimal(balance["burn_rate_per_hour"]) == Decimal("1.251")


def test_frozen_wallet_refuses_spending_but_drains_to_treasury(sb: SandboxProcess) -> None:
    a, key = new_agent(sb, balance="20.00")
    b, _ = new_agent(sb, balance="0.00")
    frozen = ok(sb, "freeze_wallet", agent_id=a, reason="sla breach")
    assert frozen["frozen"] is True and frozen["wallet_id"]
    assert (
        error(post(sb, "record_transaction", agent_id=a, task_id="t", tool="x", cost="1.00"), 409)[
            "code"
        ]
        == "wallet_frozen"
    )
    assert (
        error(post(sb, "transfer_funds", from_agent_id=a, to=b, amount="1.00"), 409)["code"]
        == "wallet_frozen"
    )
    assert ok(sb, "get_balance", agent_id=a)["balance"] == "20.00"
    # Only a human (admin key) may lift a freeze.
    error(post(sb, "unfreeze_wallet", key, agent_id=a, reason="mine"), 403)
    drained = ok(sb, "transfer_funds", from_agent_id=a, to="fleet-treasury", amount="all")
    assert drained["amount"] == "20.00" and drained["balance"] == "0.00"
    ok(sb, "unfreeze_wallet", agent_id=a, reason="cleared")
    ok(sb, "record_transaction", agent_id=a, task_id="t", tool="x", cost="0.00")


def test_deregistering_a_funded_agent_leaves_an_orphan_wallet(sb: SandboxProcess) -> None:
    a, _ = new_agent(sb, balance="3.00")
    ghost, _ = new_agent(sb)  # identity without wallet
    ok(sb, "deregister_agent", agent_id=a, reason="careless")
    state = sb.state()
    assert state["orphans"]["count"] == 1
    assert state["orphans"]["wallets"][0] == {
        "wallet_id": state["orphans"]["wallets"][0]["wallet_id"],
        "agent_id": a,
        "balance": "3.00",
        "frozen": False,
    }
    assert state["identities_without_wallet"] == {"count": 1, "agent_ids": [ghost]}
    assert sb.agent(a)["status"] == "deregistered"


def test_cost_runaway_agent_burns_money_as_the_clock_moves(sb: SandboxProcess) -> None:
    agent, _ = new_agent(sb, balance="100.00", profile="cost_runaway")
    before = ok(sb, "get_balance", agent_id=agent)
    sb.advance_clock(3 * 3600)
    after = ok(sb, "get_balance", agent_id=agent)
    assert Decimal(after["balance"]) < Decimal(before["balance"])
    assert Decimal(after["burn_rate_per_hour"]) > Decimal(before["burn_rate_per_hour"])
    assert Decimal(sb.agent(agent)["wallet"]["simulated_spend"]) == Decimal("100.00") - Decimal(
        after["balance"]
    )
    # A frozen wallet stops the burn.
    ok(sb, "freeze_wallet", agent_id=agent, reason="runaway")
    sb.advance_clock(3600)
    assert ok(sb, "get_balance", agent_id=agent)["balance"] == after["balance"]


# --- simulated fleet, SLA ------------------------------------------------------------------


def test_clock_advance_degrades_an_agent_into_an_sla_violation(sb: SandboxProcess) -> None:
    agent, _ = new_agent(sb, balance="10.00", profile="degrading")
    ok(sb, "create_sla", agent_id=agent, template="standard-support")
    first = ok(sb, "get_analytics", agent_id=agent, time_range="1h")
    assert set(first) >= {
        "latency_p50",
        "latency_p99",
        "error_rate",
        "tool_call_volume",
        "task_completion_rate",
    }
    assert ok(sb, "check_sla_compliance", agent_id=agent)["compliant"] is True

    sb.advance_clock(3 * 3600)  # every degrading agent breaches within 2 h
    later = ok(sb, "get_analytics", agent_id=agent, time_range="1h")
    assert later["latency_p99"] > first["latency_p99"] * 2
    assert later["error_rate"] > first["error_rate"]
    check = ok(sb, "check_sla_compliance", agent_id=agent)
    assert check["compliant"] is False and check["margin_pct"] < 0
    assert "p99_latency_ms" in check["breached_terms"]

    violations = ok(sb, "get_sla_violations", agent_id=agent)
    assert len(violations["violations"]) == 1 and violations["violations"][0]["open"] is True
    # The episode began when the behaviour crossed the line, not when somebody looked.
    assert 60 <= violations["duration_minutes"] < 180
    sb.advance_clock(600)
    assert ok(sb, "get_sla_violations", agent_id=agent)["duration_minutes"] == pytest.approx(
        violations["duration_minutes"] + 10, abs=0.2
    )
    fleet = ok(sb, "get_sla_violations", fleet_prefix="t-", period="1d")
    assert fleet["agents_in_violation"] == 1 and fleet["duration_minutes"] > 0


def test_a_healthy_agent_stays_compliant_and_recovery_closes_the_episode(
    sb: SandboxProcess,
) -> None:
    agent, _ = new_agent(sb, profile="healthy")
    ok(
        sb,
        "create_sla",
        agent_id=agent,
        terms={
            "p99_latency_ms": 2000,
            "uptime_pct": "99.5",
            "accuracy_pct": 95,
            "max_cost_per_task": "0.05",
        },
    )
    sb.advance_clock(6 * 3600)
    assert ok(sb, "check_sla_compliance", agent_id=agent)["compliant"] is True
    sb.set_profile(agent, "dead")
    sb.advance_clock(1200)
    assert ok(sb, "check_sla_compliance", agent_id=agent)["compliant"] is False
    sb.set_profile(agent, "healthy")
    sb.advance_clock(300)
    assert ok(sb, "check_sla_compliance", agent_id=agent)["compliant"] is True
    episodes = ok(sb, "get_sla_violations", agent_id=agent)["violations"]
    assert len(episodes) == 1 and episodes[0]["open"] is False
    assert episodes[0]["duration_minutes"] == pytest.approx(20, abs=1)


def test_profiles_are_deterministic_and_mostly_healthy(sb: SandboxProcess) -> None:
    seeded = sb.seed(2000, prefix="mix")
    assert seeded["seeded"] == 2000
    assert all(re.fullmatch(r"mix-\d{4}-[0-9a-f]{8}", a) for a in seeded["agent_ids"])
    profiles = sb.state()["agents"]["profiles"]
    assert 0.74 < profiles["healthy"] / 2000 < 0.86
    assert all(profiles[p] > 0 for p in ("flaky", "degrading", "cost_runaway", "dead"))
    sb.reset()
    assert sb.seed(2000, prefix="mix")["agent_ids"] == seeded["agent_ids"]
    assert sb.state()["agents"]["profiles"] == profiles
    agent = sb.agent(seeded["first"])
    assert (
        agent["wallet"]["balance"] == "100.00" and agent["sla"]["terms"]["p99_latency_ms"] == 2000
    )
    dead = [a for a in seeded["agent_ids"][:400] if sb.agent(a)["profile"] == "dead"][:1]
    assert dead and ok(sb, "get_analytics", agent_id=dead[0])["error_rate"] == 1.0


def test_seeding_100k_agents_is_fast_and_small(
    spawn_sandbox: Callable[..., SandboxProcess],
) -> None:
    big = spawn_sandbox("--agents", "100000", "--latency-ms", "0", "--latency-jitter-ms", "0")
    assert big.health()["agents"] == 100_000
    assert big.started_in_s < 20, f"start-up with 100k agents took {big.started_in_s:.1f} s"
    rss_kb = int(
        re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{big.process.pid}/status").read_text()).group(1)
    )
    assert rss_kb < 400 * 1024, f"{rss_kb // 1024} MB resident for 100k agents"
    listed = big.call(
        "search_agents_by_metrics", prefix="sim-10000-", metrics=["error_rate"]
    ).json()
    assert listed["total"] == 1
    last = listed["agents"][0]["agent_id"]
    assert big.call("get_balance", agent_id=last).json()["balance"] == "100.00"
    assert big.call("check_sla_compliance", agent_id=last).status_code == 200
    # SIGTERM ends it cleanly.
    big.process.terminate()
    assert big.process.wait(10) == 0


# --- marketplace, messaging, disputes, audit, reports ----------------------------------------


def test_marketplace_search_and_best_match(sb: SandboxProcess) -> None:
    cheap, _ = new_agent(sb, profile="healthy")
    pricey, _ = new_agent(sb, profile="healthy")
    dead, _ = new_agent(sb, profile="dead")
    for agent, price in ((cheap, "0.01"), (pricey, "0.09"), (dead, "0.01")):
        ok(
            sb,
            "register_service",
            agent_id=agent,
            capabilities=["translate", "summarise"],
            pricing={"per_task": price},
        )
    found = ok(
        sb, "search_services", capabilities=["translate"], min_reputation=0.5, max_cost="0.05"
    )
    assert [s["agent_id"] for s in found["services"]] == [cheap]
    listing = found["services"][0]
    assert (
        listing["price"] == "0.01"
        and 0.5 <= listing["reputation"] <= 1
        and listing["latency_ms"] > 0
    )
    assert (
        ok(
            sb,
            "best_match",
            requirements={"capabilities": ["translate"]},
            candidates=[pricey, dead],
        )["best_match"]
        == pricey
    )
    assert ok(sb, "best_match", requirements={"capabilities": ["fly"]})["best_match"] is None


def test_messages_disputes_audit_and_compliance_report(sb: SandboxProcess) -> None:
    agent, key = new_agent(sb, balance="1.00")
    ok(
        sb,
        "create_audit_trail",
        agent_id=agent,
        action="provision",
        details={"step": "wallet"},
        metadata={"trace_id": "abc"},
    )
    chain = ok(
        sb,
        "build_claim_chain",
        agent_id=agent,
        claims=["kyc", {"type": "capability", "value": "summarise"}],
    )
    assert chain["chain_id"] and len(chain["claims"]) == 2
    msg = ok(
        sb,
        "send_message",
        key,
        to="operator",
        subject="Escalation",
        body="I am an AI agent; SLA breach.",
        priority="high",
    )
    ok(sb, "send_message", to=agent, subject="hi", body="no disclosure here")
    assert [m["message_id"] for m in sb.messages(to="operator")] == [msg["message_id"]]
    dispute = ok(
        sb,
        "create_dispute",
        agent_id=agent,
        counterparty="vendor-x",
        reason="sla",
        details={"minutes": 31},
    )
    assert dispute["status"] == "open"
    resolved = ok(
        sb,
        "resolve_dispute",
        dispute_id=dispute["dispute_id"],
        resolution="partial_refund",
        amount="0.50",
        notes="policy",
    )
    assert resolved["status"] == "resolved" and resolved["amount"] == "0.50"
    assert (
        error(
            post(sb, "resolve_dispute", dispute_id=dispute["dispute_id"], resolution="again"), 409
        )["code"]
        == "dispute_resolved"
    )

    report = ok(
        sb,
        "get_compliance_report",
        fleet_prefix="t-",
        period="30d",
        articles=[9, "11", "Art. 12", 13, 14, 15],
    )
    articles = report["articles"]
    assert set(articles) == {"9", "11", "12", "13", "14", "15"}
    assert (
        articles["12"]["status"] == "compliant" and articles["12"]["evidence"]["audit_entries"] == 1
    )
    assert articles["9"]["status"] == "findings"  # no SLA yet
    assert articles["13"]["evidence"] == {"messages": 2, "disclosed": 1}
    limits = ok(sb, "check_rate_limit", fleet="t")
    assert limits["limit"] >= limits["remaining"] > 0 and limits["reset_at"]
    view = sb.agent(agent)
    assert view["audit_count"] == 1 and view["disputes"][0]["status"] == "resolved"


def test_estimates_conversion_and_discounts(sb: SandboxProcess) -> None:
    agent, _ = new_agent(sb, profile="healthy")
    assert (
        ok(sb, "estimate_cost", tool_name="get_balance", input_size=2000)["estimated_cost"]
        == "0.002"
    )
    tier = ok(sb, "estimate_cost", agent_id=agent, new_tier="enterprise", projected_volume=1000)
    assert (
        Decimal(tier["projected_daily_cost"]) == Decimal("50.20")
        and Decimal(tier["current_daily_cost"]) > 0
    )
    conv = ok(sb, "convert_currency", amount="10.00", from_currency="USD", to_currency="EUR")
    assert conv == {**conv, "amount": "9.20", "rate": "0.92"}
    discount = ok(sb, "get_volume_discount", agent_id=agent)
    assert discount["discount_pct"] == 0 and discount["next_tier_volume"] == 10000


# --- fault injection -------------------------------------------------------------------------


def test_error_rate_fails_calls_and_failed_calls_change_nothing(sb: SandboxProcess) -> None:
    sb.set_faults(error_rate=1.0)
    agent = uid()
    err = error(post(sb, "register_agent", agent_id=agent, tier="free"), 500)
    assert err["code"] == "internal_error"
    with pytest.raises(SandboxError):
        sb.agent(agent)
    sb.set_faults(error_rate=0.3, error_status=503)
    statuses = [post(sb, "check_rate_limit", fleet="t").status_code for _ in range(200)]
    assert set(statuses) == {200, 503}
    assert 30 <= statuses.count(503) <= 90
    sb.clear_faults()
    ok(sb, "register_agent", agent_id=agent, tier="free")


def test_per_tool_failure_rate_and_outage_window(sb: SandboxProcess) -> None:
    agent, _ = new_agent(sb)
    sb.set_faults(tools={"create_wallet": {"error_rate": 1.0}})
    error(post(sb, "create_wallet", agent_id=agent, initial_balance="1.00"), 500)
    assert sb.agent(agent)["wallet"] is None  # the failure happened before any state change
    ok(sb, "get_agent_reputation", agent_id=agent)

    sb.set_faults(tools={"create_wallet": {"error_rate": 0.0, "outages": [{"duration_s": 120}]}})
    r = post(sb, "create_wallet", agent_id=agent, initial_balance="1.00")
    assert error(r, 503)["code"] == "outage"
    assert 119 <= int(r.headers["Retry-After"]) <= 120
    ok(sb, "get_agent_reputation", agent_id=agent)
    view = sb.faults()
    assert view["tools"]["create_wallet"]["outages"][0]["active"] is True
    sb.advance_clock(121)
    assert ok(sb, "create_wallet", agent_id=agent, initial_balance="1.00")["balance"] == "1.00"

    # A window given as absolute times (ISO) in the future is not active yet.
    now = sb.clock()["epoch"]
    sb.set_faults(outages=[{"start": now + 3600, "end": now + 7200}])
    ok(sb, "get_balance", agent_id=agent)
    sb.advance_clock(3600)
    error(post(sb, "get_balance", agent_id=agent), 503)


def test_rate_limit_burst_gets_429_with_retry_after(sb: SandboxProcess) -> None:
    sb.set_faults(rate_limit_next=3, retry_after_s=2)
    for _ in range(3):
        r = post(sb, "check_rate_limit", fleet="t")
        assert error(r, 429)["code"] == "rate_limited"
        assert r.headers["Retry-After"] == "2"
    assert post(sb, "check_rate_limit", fleet="t").status_code == 200
    sb.set_faults(tools={"get_leaderboard": {"rate_limit_rate": 1.0, "retry_after_s": 0.2}})
    r = post(sb, "get_leaderboard", category="reputation", fleet="")
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"  # whole seconds, rounded up
    assert post(sb, "check_rate_limit", fleet="t").status_code == 200


def test_timeouts_hold_the_call_then_drop_or_504(sb: SandboxProcess) -> None:
    sb.set_faults(timeout_rate=1.0, timeout_s=0.4)
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        post(sb, "check_rate_limit", fleet="t")
    assert time.monotonic() - started >= 0.39
    sb.set_faults(timeout_action="error")
    assert error(post(sb, "check_rate_limit", fleet="t"), 504)["code"] == "timeout"
    # A client with a shorter timeout gives up first.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            sb.gateway_url,
            json={"tool": "check_rate_limit", "input": {"fleet": "t"}},
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=0.1,
        )
    statuses = sb.counters()["statuses"]["check_rate_limit"]
    assert statuses["dropped"] == 1 and statuses["504"] >= 1


def test_kill_switch_drops_connections_but_admin_api_still_answers(sb: SandboxProcess) -> None:
    sb.set_faults(kill=True)
    for _ in range(3):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
            post(sb, "check_rate_limit", fleet="t")
    assert sb.health()["status"] == "ok"
    assert sb.counters()["statuses"]["check_rate_limit"] == {"dropped": 3}
    sb.set_faults(kill=False)
    assert post(sb, "check_rate_limit", fleet="t").status_code == 200


def test_drop_after_commit_loses_the_answer_but_keeps_the_change(sb: SandboxProcess) -> None:
    agent = uid()
    sb.set_faults(tools={"register_agent": {"drop_after_commit_rate": 1.0}})
    with pytest.raises(httpx.RemoteProtocolError):
        post(sb, "register_agent", agent_id=agent, tier="free")
    sb.clear_faults()
    assert sb.agent(agent)["status"] == "active"
    error(post(sb, "register_agent", agent_id=agent, tier="free"), 409)


def test_fault_config_is_validated(sb: SandboxProcess) -> None:
    for bad, field in (
        ({"error_rate": 1.5}, "error_rate"),
        ({"error_status": 418}, "error_status"),
        ({"tools": {"no_such_tool": {"error_rate": 0.1}}}, "tools.no_such_tool"),
        (
            {"tools": {"get_balance": {"outages": [{"duration_s": -1}]}}},
            "tools.get_balance.outages[0].duration_s",
        ),
        ({"latency_ms": "fast"}, "latency_ms"),
        ({"surprise": True}, "surprise"),
    ):
        with pytest.raises(SandboxError) as info:
            sb.set_faults(**bad)
        assert info.value.status == 400 and field in str(info.value), bad
    assert sb.faults()["active"] is False  # nothing half-applied


def test_latency_is_injected_without_blocking_other_calls(sb: SandboxProcess) -> None:
    sb.set_faults(latency_ms=0, tools={"get_leaderboard": {"latency_ms": 300}})
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        slow = pool.submit(post, sb, "get_leaderboard", category="reputation", fleet="")
        time.sleep(0.05)
        started = time.monotonic()
        assert post(sb, "check_rate_limit", fleet="t").status_code == 200
        assert time.monotonic() - started < 0.2
        assert slow.result().status_code == 200


# --- counters and robustness ------------------------------------------------------------------


def test_counters_count_every_call_per_tool_agent_and_status(sb: SandboxProcess) -> None:
    agent, _ = new_agent(sb, balance="1.00")
    sb.reset_counters()
    ok(sb, "get_balance", agent_id=agent)
    ok(sb, "get_balance", agent_id=agent)
    error(post(sb, "get_balance", agent_id="ghost-1"), 404)
    sb.set_faults(rate_limit_next=1)
    error(post(sb, "get_balance", agent_id=agent), 429)
    error(post(sb, "nope"), 404)
    counters = sb.counters()
    assert counters["total"] == 5
    assert counters["tools"] == {"get_balance": 4, "<unknown>": 1}
    assert counters["statuses"]["get_balance"] == {"200": 2, "404": 1, "429": 1}
    assert counters["agents"][agent] == {"get_balance": 3}
    assert counters["agents"]["ghost-1"] == {"get_balance": 1}
    assert "agents" not in sb.counters(agents=False)
    assert set(sb.counters(agent_prefix="ghost")["agents"]) == {"ghost-1"}


def _junk_values() -> list[Any]:
    return [
        None,
        True,
        -1,
        0,
        1.5,
        1e308,
        "",
        "x" * 5000,
        "1e5",
        "NaN",
        [],
        [1, {"a": None}],
        {},
        {"nested": {"deep": [1]}},
    ]


def test_bad_input_never_crashes_the_server(sb: SandboxProcess) -> None:
    agent, _ = new_agent(sb, balance="5.00")
    ok(sb, "create_sla", agent_id=agent, template="standard-support")
    fields = [
        "agent_id",
        "tier",
        "capabilities",
        "metadata",
        "rotate_key",
        "upgrade",
        "claims",
        "initial_balance",
        "tool_name",
        "input_size",
        "new_tier",
        "projected_volume",
        "amount",
        "from_currency",
        "to_currency",
        "task_id",
        "tool",
        "cost",
        "timestamp",
        "metrics",
        "time_range",
        "prefix",
        "category",
        "fleet",
        "terms",
        "template",
        "fleet_prefix",
        "period",
        "to",
        "subject",
        "body",
        "priority",
        "requires_response",
        "counterparty",
        "reason",
        "details",
        "dispute_id",
        "resolution",
        "notes",
        "pricing",
        "min_reputation",
        "max_cost",
        "requirements",
        "candidates",
        "action",
        "articles",
        "from_agent_id",
        "limit",
        "offset",
    ]
    junk = _junk_values()
    statuses = set()
    with httpx.Client(headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10) as client:
        for i, tool in enumerate(sorted(TOOLS)):
            for j, value in enumerate(junk):
                inp: dict[str, Any] = {"agent_id": agent, "from_agent_id": agent}
                inp[fields[(i * 7 + j) % len(fields)]] = value
                inp[fields[(i * 3 + j * 5) % len(fields)]] = junk[(i + j) % len(junk)]
                r = client.post(sb.gateway_url, json={"tool": tool, "input": inp})
                statuses.add(r.status_code)
                assert r.status_code in (200, 400, 403, 404, 409), (tool, inp, r.text)
                r.json()
    assert 400 in statuses
    assert sb.health()["status"] == "ok"
