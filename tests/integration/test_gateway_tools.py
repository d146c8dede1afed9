"""The real gateway client over HTTP against the local sandbox.

Every one of the 29 tools goes through the client; then the sandbox is told
to misbehave and its own call counters show that the retry ceiling and the
circuit breaker bound what reaches it. Tests use their own agent ids, reset
only the call counters, and clear any faults they set.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from fleet.gateway import (
    AsyncGatewayClient,
    AuthError,
    BadInput,
    BreakerState,
    CircuitOpen,
    Conflict,
    GatewayClient,
    GatewayConfig,
    NotFound,
    RateLimited,
    TraceContext,
    Unavailable,
    tools,
)
from fleet.gateway.tools import Tool
from sandbox.control import SandboxControl

pytestmark = pytest.mark.integration

TREASURY = "fleet-treasury"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _config(sandbox: SandboxControl, **overrides: Any) -> GatewayConfig:
    settings: dict[str, Any] = {
        "url": sandbox.gateway_url,
        "admin_key": sandbox.admin_key,
        "timeout_s": 5.0,
        "connect_timeout_s": 2.0,
        "max_attempts": 3,
        "backoff_initial_s": 0.0,
        "backoff_max_s": 0.0,
        "retry_after_max_s": 5.0,
        "breaker_failure_threshold": 4,
        "breaker_reset_s": 30.0,
    }
    settings.update(overrides)
    return GatewayConfig(**settings)


def _no_sleep(seconds: float) -> None:
    pass


@pytest.fixture
def prefix() -> str:
    """An id prefix of this test's own, so tests never see each other's agents."""
    return f"gwt-{secrets.token_hex(4)}"


@pytest.fixture
def gateway(sandbox: SandboxControl) -> Iterator[GatewayClient]:
    with GatewayClient(_config(sandbox), sleep=_no_sleep) as client:
        yield client


@pytest.fixture
def faulty(sandbox: SandboxControl) -> Iterator[SandboxControl]:
    """The sandbox with counters zeroed; whatever faults the test sets are cleared after."""
    sandbox.clear_faults()
    sandbox.reset_counters()
    try:
        yield sandbox
    finally:
        sandbox.clear_faults()


def _provision(gateway: GatewayClient, agent_id: str, balance: str = "50.00") -> str:
    agent = gateway.run(
        tools.register_agent(agent_id, "standard", ["search", "summarise"], {"fleet": "it"})
    )
    gateway.run(tools.create_wallet(agent_id, Decimal(balance)))
    assert agent.api_key is not None
    return agent.api_key.get_secret_value()


def _calls(sandbox: SandboxControl, tool: str) -> int:
    return int(sandbox.counters(agents=False)["tools"].get(tool, 0))


# -- every tool ----------------------------------------------------------------------


def test_fleet_lifecycle_exercises_all_29_tools(
    sandbox: SandboxControl, gateway: GatewayClient, prefix: str
) -> None:
    sandbox.reset_counters()
    a, b = f"{prefix}-0001-aaaaaaaa", f"{prefix}-0002-bbbbbbbb"
    trace = TraceContext.new()

    # identity, wallets
    registered = gateway.run(
        tools.register_agent(a, "standard", ["search", "summarise"], {"fleet": prefix}), trace=trace
    )
    assert registered.agent_id == a and registered.tier == "standard"
    assert registered.trace is not None and registered.trace.trace_id == trace.trace_id
    assert registered.api_key is not None
    key_a = registered.api_key.get_secret_value()
    _provision(gateway, b, "10.00")
    wallet = gateway.run(tools.create_wallet(a, Decimal("50.00")))
    assert wallet.balance == Decimal("50.00")
    chain = gateway.run(tools.build_claim_chain(a, ["kyc-verified", {"type": "soc2"}]))
    assert len(chain.claims) == 2
    rotated = gateway.run(tools.rotate_agent_key(b))
    assert rotated.api_key is not None
    upgraded = gateway.run(tools.upgrade_agent_tier(b, "premium"))
    assert upgraded.tier == "premium" and upgraded.api_key is None

    # billing and payments, with the agent's own key where it acts for itself
    balance = gateway.run(tools.get_balance(a), api_key=key_a)
    assert Decimal(0) <= balance.balance <= Decimal("50.00")
    assert balance.burn_rate_per_hour >= 0
    assert gateway.run(tools.estimate_cost("search_services", 2000)).estimated_cost > 0
    tier_change = gateway.run(tools.estimate_tier_change(a, "premium", 5000))
    assert tier_change.projected_daily_cost > 0
    assert gateway.run(tools.get_volume_discount(a)).discount_pct >= 0
    converted = gateway.run(tools.convert_currency(Decimal("10.00"), "USD", "EUR"))
    assert converted.amount == Decimal("9.2") and converted.rate == Decimal("0.92")
    spent = gateway.run(
        tools.record_transaction(a, "task-1", "search", Decimal("0.25")), api_key=key_a
    )
    assert spent.transaction_id

    # trust
    assert gateway.run(tools.submit_metrics(a, {"accuracy_pct": 97.5})).accepted
    assert 0 <= gateway.run(tools.get_agent_reputation(a)).score <= 1
    analytics = gateway.run(tools.get_analytics(a, "1h"))
    assert analytics.latency_p99 is not None and analytics.latency_p50 is not None
    assert analytics.latency_p99 >= analytics.latency_p50
    found = gateway.run(tools.search_agents_by_metrics(prefix, ["error_rate", "reputation"]))
    assert {row["agent_id"] for row in found.agents} == {a, b}
    board = gateway.run(tools.get_leaderboard("reputation", prefix))
    assert len(board.entries) == 2

    # sla
    assert gateway.run(tools.create_sla(a, template="standard-support")).sla_id
    compliance = gateway.run(tools.check_sla_compliance(a))
    assert compliance.compliant == (compliance.breached_terms == [])
    assert gateway.run(tools.get_sla_violations(a)).duration_minutes >= 0
    fleet_violations = gateway.run(tools.get_sla_violations(fleet_prefix=prefix, period="30d"))
    assert fleet_violations.duration_minutes >= 0

    # messaging, disputes
    sent = gateway.run(
        tools.send_message(b, "handover", "An AI agent hands over task-1.", priority="high"),
        api_key=key_a,
    )
    assert sent.message_id
    dispute = gateway.run(tools.create_dispute(a, b, "sla_breach", {"minutes": 42}))
    assert dispute.status == "open"
    resolved = gateway.run(
        tools.resolve_dispute(dispute.dispute_id, "partial_refund", Decimal("1.50"), "policy")
    )
    assert (resolved.dispute_id, resolved.status) == (dispute.dispute_id, "resolved")

    # marketplace
    skill = f"skill-{prefix}"  # only this test's agent offers it
    service = gateway.run(tools.register_service(a, [skill], {"per_task": Decimal("0.02")}))
    assert service.service_id
    listing = gateway.run(tools.search_services([skill], max_cost=Decimal("0.02")))
    assert [(s.agent_id, s.price) for s in listing.services] == [(a, Decimal("0.02"))]
    assert gateway.run(tools.best_match({"capabilities": [skill]}, [a, b])).best_match == a

    # compliance, platform
    audit = gateway.run(
        tools.create_audit_trail(
            a, "provisioned", {"steps": 6}, {"trace_id": trace.trace_id, "span_id": trace.span_id}
        )
    )
    assert audit.audit_id
    report = gateway.run(tools.get_compliance_report(prefix, "30d", [12, 13]))
    assert set(report.articles) == {"12", "13"}
    limits = gateway.run(tools.check_rate_limit(prefix))
    assert 0 <= limits.remaining <= limits.limit

    # retirement: freeze, drain to the treasury, deregister
    assert gateway.run(tools.freeze_wallet(b, "pause")).frozen
    assert not gateway.run(tools.unfreeze_wallet(b, "resume")).frozen
    assert gateway.run(tools.freeze_wallet(a, "retire")).frozen
    assert gateway.run(tools.transfer_funds(a, TREASURY, "all")).transaction_id
    gone = gateway.run(tools.deregister_agent(a, "retired"))
    assert gone.status == "deregistered"

    # The sandbox saw every tool, each answered 200, and the state moved.
    counters = sandbox.counters(agents=False)
    assert set(counters["tools"]) == set(Tool)
    assert {tool: set(statuses) for tool, statuses in counters["statuses"].items()} == {
        tool: {"200"} for tool in Tool
    }
    view = sandbox.agent(a)
    assert view["status"] == "deregistered"
    assert view["wallet"]["frozen"] and Decimal(view["wallet"]["balance"]) == 0
    assert view["transaction_count"] == 2  # the spend, then the drain
    assert view["audits"][-1]["metadata"]["trace_id"] == trace.trace_id


def test_raw_call_returns_the_validated_answer(gateway: GatewayClient, prefix: str) -> None:
    agent_id = f"{prefix}-0001-cccccccc"
    _provision(gateway, agent_id)
    answer = gateway.call("get_balance", {"agent_id": agent_id})
    assert answer["balance"] == "50.00"  # money stays a string in the raw form
    sent = gateway.send("get_balance", {"agent_id": agent_id})
    assert sent.attempts == 1 and sent.data["wallet_id"]


def test_sandbox_errors_map_to_typed_errors(
    sandbox: SandboxControl, gateway: GatewayClient, prefix: str
) -> None:
    a, b = f"{prefix}-0001-dddddddd", f"{prefix}-0002-eeeeeeee"
    key_a = _provision(gateway, a)
    _provision(gateway, b)
    sandbox.reset_counters()

    with pytest.raises(NotFound) as not_found:
        gateway.run(tools.get_balance(f"{prefix}-9999-ffffffff"))
    assert not_found.value.code == "agent_not_found"
    with pytest.raises(Conflict):
        gateway.run(tools.register_agent(a, "standard", [], {}))
    with pytest.raises(AuthError) as wrong_key:
        gateway.run(tools.get_balance(a), api_key="a2a_standard_" + "0" * 32)
    assert wrong_key.value.status == 401
    with pytest.raises(AuthError) as not_yours:
        gateway.run(tools.get_balance(b), api_key=key_a)
    assert not_yours.value.status == 403
    assert key_a not in str(not_yours.value)
    with pytest.raises(BadInput) as bad:
        gateway.call("create_wallet", {"agent_id": a, "initial_balance": 5.5})
    assert "initial_balance" in bad.value.message
    with pytest.raises(NotFound):
        gateway.call("no_such_tool", {})
    # Caller errors are answered once each: never retried, breaker untouched.
    assert sandbox.counters(agents=False)["total"] == 6
    assert set(gateway.breakers.states().values()) == {BreakerState.CLOSED}


def test_async_client_fans_out(sandbox: SandboxControl, prefix: str) -> None:
    ids = [f"{prefix}-{i:04d}-abcdef01" for i in range(1, 41)]
    sandbox.reset_counters()

    async def main() -> list[Decimal]:
        async with AsyncGatewayClient(_config(sandbox)) as client:
            await asyncio.gather(
                *(client.run(tools.register_agent(i, "starter", ["search"], {})) for i in ids)
            )
            await asyncio.gather(
                *(client.run(tools.create_wallet(i, Decimal("5.00"))) for i in ids)
            )
            balances = await asyncio.gather(*(client.run(tools.get_balance(i)) for i in ids))
            return [b.balance for b in balances]

    assert asyncio.run(main()) == [Decimal("5.00")] * len(ids)
    tools_seen = sandbox.counters(agents=False)["tools"]
    assert (
        tools_seen["register_agent"],
        tools_seen["create_wallet"],
        tools_seen["get_balance"],
    ) == (
        40,
        40,
        40,
    )


# -- faults: retry ceiling and breaker ---------------------------------------------------


def test_outage_costs_threshold_requests_not_a_retry_storm(
    faulty: SandboxControl, prefix: str
) -> None:
    """The playbook's partial outage: one tool down, many callers, bounded load."""
    clock = FakeClock()
    config = _config(faulty, max_attempts=3, breaker_failure_threshold=4, breaker_reset_s=30.0)
    with GatewayClient(config, sleep=_no_sleep, clock=clock) as gateway:
        agent_id = f"{prefix}-0001-01010101"
        _provision(gateway, agent_id)
        faulty.set_faults(tools={"get_balance": {"outages": [{"duration_s": 3600}]}})
        faulty.reset_counters()

        calls = 50
        errors = []
        for _ in range(calls):
            with pytest.raises(Unavailable) as info:
                gateway.run(tools.get_balance(agent_id))
            errors.append(info.value)

        # Without a breaker: calls × max_attempts = 150 requests. With it: the threshold.
        assert _calls(faulty, "get_balance") == config.breaker_failure_threshold
        assert [type(e) for e in errors[:2]] == [Unavailable, Unavailable]
        assert all(isinstance(e, CircuitOpen) for e in errors[2:])
        assert errors[0].status == 503 and errors[0].code == "outage"
        # Other tools keep working: the breaker is per tool.
        assert 0 <= gateway.run(tools.get_agent_reputation(agent_id)).score <= 1

        # Half-open after the reset period: exactly one trial request, which fails.
        clock.now += config.breaker_reset_s
        for _ in range(10):
            with pytest.raises(Unavailable):
                gateway.run(tools.get_balance(agent_id))
        assert _calls(faulty, "get_balance") == config.breaker_failure_threshold + 1
        assert gateway.breakers.states()["get_balance"] is BreakerState.OPEN

        # The outage ends; the next trial closes the breaker and calls flow again.
        faulty.clear_faults()
        clock.now += config.breaker_reset_s
        for _ in range(5):
            assert gateway.run(tools.get_balance(agent_id)).balance <= Decimal("50.00")
        assert _calls(faulty, "get_balance") == config.breaker_failure_threshold + 1 + 5
        assert gateway.breakers.states()["get_balance"] is BreakerState.CLOSED


def test_server_errors_are_retried_exactly_to_the_ceiling(
    faulty: SandboxControl, prefix: str
) -> None:
    with GatewayClient(
        _config(faulty, max_attempts=4, breaker_failure_threshold=100), sleep=_no_sleep
    ) as gateway:
        agent_id = f"{prefix}-0001-02020202"
        _provision(gateway, agent_id)
        faulty.set_faults(tools={"get_agent_reputation": {"error_rate": 1.0, "error_status": 502}})
        faulty.reset_counters()
        with pytest.raises(Unavailable) as info:
            gateway.run(tools.get_agent_reputation(agent_id))
        assert info.value.status == 502
        assert _calls(faulty, "get_agent_reputation") == 4


def test_rate_limits_honour_retry_after_up_to_the_cap(faulty: SandboxControl, prefix: str) -> None:
    slept: list[float] = []
    with GatewayClient(
        _config(faulty, max_attempts=3, retry_after_max_s=5.0), sleep=slept.append
    ) as gateway:
        agent_id = f"{prefix}-0001-03030303"
        _provision(gateway, agent_id)

        # Two 429s with Retry-After: 2, then an answer.
        faulty.set_faults(tools={"get_balance": {"rate_limit_next": 2, "retry_after_s": 2}})
        faulty.reset_counters()
        assert gateway.run(tools.get_balance(agent_id)).balance <= Decimal("50.00")
        assert slept == [2.0, 2.0]
        assert _calls(faulty, "get_balance") == 3

        # A Retry-After beyond the cap fails fast, after one request.
        faulty.set_faults(tools={"get_balance": {"rate_limit_next": 5, "retry_after_s": 60}})
        faulty.reset_counters()
        with pytest.raises(RateLimited) as info:
            gateway.run(tools.get_balance(agent_id))
        assert info.value.retry_after == 60.0
        assert _calls(faulty, "get_balance") == 1
        assert slept == [2.0, 2.0]


def test_dropped_connections_retry_reads_but_never_repeat_a_spend(
    faulty: SandboxControl, prefix: str
) -> None:
    async def main() -> None:
        config = _config(faulty, max_attempts=3, breaker_failure_threshold=100)

        async def no_sleep(seconds: float) -> None:
            pass

        async with AsyncGatewayClient(config, sleep=no_sleep) as gateway:
            agent_id = f"{prefix}-0001-04040404"
            await gateway.run(tools.register_agent(agent_id, "standard", ["search"], {}))
            await gateway.run(tools.create_wallet(agent_id, Decimal("10.00")))

            # A read whose connection drops is retried to the ceiling.
            faulty.set_faults(tools={"get_balance": {"drop_rate": 1.0}})
            with pytest.raises(Unavailable) as dropped:
                await gateway.run(tools.get_balance(agent_id))
            assert dropped.value.code == "connection_error" and dropped.value.maybe_processed

            # A spend that lands and then loses its answer is not sent again.
            faulty.set_faults(tools={"record_transaction": {"drop_after_commit_rate": 1.0}})
            with pytest.raises(Unavailable) as lost:
                await gateway.run(
                    tools.record_transaction(agent_id, "task-1", "search", Decimal("1.00"))
                )
            assert lost.value.maybe_processed

    asyncio.run(main())
    counted = faulty.counters(agents=False)["tools"]
    assert counted["get_balance"] == 3
    assert counted["record_transaction"] == 1
    view = faulty.agent(f"{prefix}-0001-04040404")
    assert view["transaction_count"] == 1  # charged once, as the caller must now verify


def test_timeouts_are_unavailable_and_retried(faulty: SandboxControl, prefix: str) -> None:
    config = _config(faulty, timeout_s=0.2, max_attempts=2, breaker_failure_threshold=100)
    with GatewayClient(config, sleep=_no_sleep) as gateway:
        agent_id = f"{prefix}-0001-05050505"
        _provision(gateway, agent_id)
        faulty.set_faults(timeout_s=1.0, tools={"get_balance": {"timeout_rate": 1.0}})
        faulty.reset_counters()
        with pytest.raises(Unavailable) as info:
            gateway.run(tools.get_balance(agent_id))
        assert info.value.code == "timeout" and info.value.status is None
        assert _calls(faulty, "get_balance") == 2
