"""The gateway client over HTTP against the sandbox: every operation, then the failures.

Every builder of :mod:`fleet.gateway.operations` goes through each client (sync, async,
loop); then the sandbox is told to misbehave and its own counters show that the retry
ceiling, the breaker, the pacing of an agent's hour and the idempotency keys bound what
reaches it. Tests use their own agent ids, reset only the counters, and clear the faults
they set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import secrets
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from fleet.gateway import (
    AlreadyExists,
    AsyncGatewayClient,
    Auth,
    AuthError,
    BreakerState,
    Charge,
    CircuitOpen,
    Forbidden,
    GatewayClient,
    GatewayConfig,
    InsufficientTier,
    LoopGatewayClient,
    NotFound,
    Operation,
    RateLimited,
    StaticKeyRing,
    Unavailable,
    WalletFrozen,
    operations,
)
from fleet.monitoring.heartbeats import new_identity_key, public_key_hex
from tests.conftest import SandboxProcess

pytestmark = pytest.mark.integration

ADMIN_AGENT = "fleet-admin"
# Every builder of the catalogue (``money`` formats amounts; it builds nothing).
BUILDERS = frozenset(
    name
    for name, fn in inspect.getmembers(operations, inspect.isfunction)
    if fn.__module__ == operations.__name__ and not name.startswith("_") and name != "money"
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _config(sandbox: SandboxProcess, **overrides: Any) -> GatewayConfig:
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


async def _no_sleep_async(seconds: float) -> None:
    pass


@pytest.fixture
def prefix() -> str:
    """An id prefix of this test's own, so tests never see each other's agents."""
    return f"gwt-{secrets.token_hex(4)}"


@pytest.fixture
def faulty(sandbox: SandboxProcess) -> Iterator[SandboxProcess]:
    """The sandbox with counters zeroed; whatever faults the test sets are cleared after."""
    sandbox.clear_faults()
    sandbox.reset_counters()
    try:
        yield sandbox
    finally:
        sandbox.clear_faults()


def _calls(sandbox: SandboxProcess, tool: str) -> int:
    return int(sandbox.counters(agents=False)["tools"].get(tool, 0))


def _statuses(sandbox: SandboxProcess, tool: str) -> dict[str, int]:
    return dict(sandbox.counters(agents=False)["statuses"].get(tool, {}))


# -- every operation, through each client ------------------------------------------------

Run = Callable[[Operation[Any]], Any]


class Catalogue:
    """Runs operations and notes which builder made each."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self.used: set[str] = set()

    def __call__(self, builder: Callable[..., Operation[Any]], *args: Any, **kwargs: Any) -> Any:
        self.used.add(builder.__name__)
        return self._run(builder(*args, **kwargs))


def _every_operation(
    call: Catalogue, sandbox: SandboxProcess, keys: StaticKeyRing, prefix: str
) -> tuple[str, str]:
    """A small fleet's life through every operation; returns the two agents."""
    o = operations
    a, b = f"{prefix}-0001-aaaaaaaa", f"{prefix}-0002-bbbbbbbb"

    # identity: free keys on registration; pro keys from the operator, as in production
    for agent in (a, b):
        registered = call(o.register, agent)
        assert (registered.agent_id, registered.tier) == (agent, "free")
        assert registered.balance == Decimal(500)
        keys.add(agent, sandbox.mint_key(agent, "pro"))
    ours = public_key_hex(new_identity_key())
    assert call(o.set_identity_key, a, ours).public_key == ours
    assert call(o.get_identity, a).public_key == ours
    submitted = call(o.submit_metrics, a, {"accuracy": Decimal("0.97"), "uptime": 99})
    assert submitted.agent_id == a
    chain = call(o.build_claim_chain, a)
    assert chain.leaf_count >= 1 and chain.merkle_root
    assert len(call(o.get_claim_chains, a).chains) == 1
    assert isinstance(call(o.get_claims, a).claims, list)
    ingested = call(o.ingest_metrics, a, {"p99_latency_ms": 120, "error_rate": Decimal("0.02")})
    assert (ingested.accepted, ingested.rejected) == (2, 0)
    [point] = call(o.query_metrics, a, "p99_latency_ms").data
    assert point.value == 120
    assert call(o.get_reputation, a).composite_score >= 0

    # billing, with the admin key on the operator's side
    assert call(o.get_balance, a).balance == Decimal(500)
    assert call(o.deposit, a, Decimal("10.00"), "top-up").new_balance == Decimal("510.00")
    assert call(o.withdraw, a, "1.50", "refund").new_balance == Decimal("508.50")
    call(o.set_budget, a, Decimal("100.00"), monthly_cap=Decimal("1000.00"))
    budget = call(o.get_budget, a)
    assert budget.daily_cap == Decimal("100.00") and budget.monthly_cap == Decimal("1000.00")
    assert call(o.get_usage, a).total_calls >= 0
    assert call(o.estimate_cost, "best_match").total_cost == Decimal("0.10")
    assert call(o.get_volume_discount, a, "best_match", 100).discount_pct >= 0
    assert call(o.exchange_rate, "CREDITS", "USD").rate > 0
    assert isinstance(call(o.leaderboard, "spend", 10).leaderboard, list)
    listed = call(o.list_keys, a).keys
    assert listed and all(k.agent_id == a for k in listed)
    rotated = call(o.rotate_key, keys.agent_key(b) or "")
    assert (rotated.agent_id, rotated.tier) == (b, "pro")
    keys.add(b, rotated.new_key.get_secret_value())

    # payments and disputes
    intent = call(o.create_intent, a, b, Decimal("5.00"), "task-1")
    assert intent.amount == Decimal("5.00")
    assert call(o.capture_intent, intent.id, payer=a).id
    escrow = call(o.create_escrow, a, b, Decimal("20.00"))
    assert (escrow.status, call(o.get_escrow, escrow.id).status) == ("held", "held")
    dispute = call(o.open_dispute, escrow.id, a, "the work was not delivered")
    assert call(o.respond_to_dispute, dispute.id, b, "it was").id == dispute.id
    resolved = call(o.resolve_dispute, dispute.id, "refund", ADMIN_AGENT, "policy")
    assert call(o.get_dispute, dispute.id).status == resolved.status
    spare = call(o.create_escrow, a, b, Decimal("2.00"))
    assert call(o.cancel_escrow, spare.id, payer=a).status != "held"

    # marketplace, messaging, events, trust
    skill = f"skill-{prefix}"  # only this test's agent offers it
    service = call(
        o.register_service,
        a,
        f"{prefix} triage",
        "An AI agent that triages support tickets.",
        "support",
        ["search"],
        [skill],
        "https://agents.example/triage",
        {"model": "per_call", "cost": Decimal("0.02")},
    )
    assert call(o.get_service, service.id).id == service.id
    found = call(o.search_services, tags=[skill])
    assert [s.id for s in found.services] == [service.id]
    # Paid by the caller: the agent's own key, so the shared admin wallet is left alone.
    assert isinstance(call(o.best_match, f"{prefix} triage", auth=Auth.own(a)).matches, list)
    call(o.deactivate_service, service.id)
    sent = call(o.send_message, a, b, "text", "handover", "An AI agent hands over task-1.")
    assert sent.id in {m.id for m in call(o.get_messages, b).messages}
    published = call(o.publish_event, "fleet.test", prefix, {"agent_id": a})
    events = call(o.get_events, "fleet.test", published.event_id - 1, 10).events
    assert [(e.id, e.source) for e in events] == [(published.event_id, prefix)]
    assert call(o.freeze_wallet, b).frozen
    assert not call(o.unfreeze_wallet, b).frozen
    with pytest.raises(NotFound):  # never registered: the gateway's own answer
        call(o.delete_trust_server, f"{prefix}-server")
    return a, b


def _check_every_operation(
    call: Catalogue, sandbox: SandboxProcess, a: str, charges: list[Charge]
) -> None:
    assert call.used == BUILDERS, sorted(BUILDERS - call.used)
    counters = sandbox.counters(agents=False)
    answered = {
        tool: codes for tool, codes in counters["statuses"].items() if set(codes) - {"200", "201"}
    }
    assert answered == {"delete_server": {"404": 1}}, answered
    # X-Charged, as the gateway charges: the fees on payments and the paid search.
    paid = {(c.operation, c.amount, c.by_admin) for c in charges if c.amount}
    assert paid == {
        ("create_intent", Decimal("0.10"), False),
        ("create_escrow", Decimal("0.30"), False),
        ("create_escrow", Decimal("0.03"), False),
        ("best_match", Decimal("0.10"), False),
    }, paid
    view = sandbox.agent(a)
    assert Decimal(view["wallet"]["balance"]) == call(operations.get_balance, a).balance


def test_every_operation_through_the_sync_client(sandbox: SandboxProcess, prefix: str) -> None:
    sandbox.reset_counters()
    charges: list[Charge] = []
    keys = StaticKeyRing(sandbox.admin_key)
    with GatewayClient(_config(sandbox), keys, sleep=_no_sleep, on_charge=charges.append) as c:
        call = Catalogue(c.run)
        a, _ = _every_operation(call, sandbox, keys, prefix)
        _check_every_operation(call, sandbox, a, charges)


def test_every_operation_through_the_async_client(sandbox: SandboxProcess, prefix: str) -> None:
    sandbox.reset_counters()
    charges: list[Charge] = []
    keys = StaticKeyRing(sandbox.admin_key)
    with asyncio.Runner() as runner:
        client = runner.run(_async_client(sandbox, keys, charges))
        try:
            call = Catalogue(lambda op: runner.run(client.run(op)))
            a, _ = _every_operation(call, sandbox, keys, prefix)
            _check_every_operation(call, sandbox, a, charges)
        finally:
            runner.run(client.aclose())


async def _async_client(
    sandbox: SandboxProcess, keys: StaticKeyRing, charges: list[Charge]
) -> AsyncGatewayClient:
    # Built on the loop that runs it; no transport: the package's own keep-alive pool.
    return AsyncGatewayClient(
        _config(sandbox), keys, sleep=_no_sleep_async, on_charge=charges.append
    )


def test_every_operation_through_the_loop_client(sandbox: SandboxProcess, prefix: str) -> None:
    sandbox.reset_counters()
    charges: list[Charge] = []
    keys = StaticKeyRing(sandbox.admin_key)
    client = LoopGatewayClient(
        _config(sandbox), keys, sleep=_no_sleep_async, on_charge=charges.append
    )
    try:
        call = Catalogue(client.run)
        a, _ = _every_operation(call, sandbox, keys, prefix)
        _check_every_operation(call, sandbox, a, charges)
    finally:
        client.close()


def test_gateway_refusals_map_to_typed_errors_and_are_not_retried(
    faulty: SandboxProcess, prefix: str
) -> None:
    a, b = f"{prefix}-0001-dddddddd", f"{prefix}-0002-eeeeeeee"
    keys = StaticKeyRing(faulty.admin_key)
    with GatewayClient(_config(faulty), keys, sleep=_no_sleep) as gateway:
        for agent in (a, b):
            keys.add(agent, gateway.run(operations.register(agent)).api_key.get_secret_value())
        faulty.reset_counters()
        with pytest.raises(NotFound) as not_found:
            gateway.run(operations.get_balance(f"{prefix}-9999-ffffffff"))
        assert not_found.value.status == 404
        with pytest.raises(AlreadyExists):
            gateway.run(operations.register(a))
        keys.add("impostor", "a2a_free_" + "0" * 24)  # a key the gateway never issued
        with pytest.raises(AuthError) as wrong_key:
            gateway.run(operations.get_balance(a, auth=Auth.own("impostor")))
        assert wrong_key.value.status == 401
        with pytest.raises(Forbidden) as not_yours:
            gateway.run(operations.get_messages(b, auth=Auth.own(a)))
        assert not_yours.value.status == 403
        assert (keys.agent_key(a) or "") not in str(not_yours.value)
        with pytest.raises(InsufficientTier):  # a free key cannot build claim chains
            gateway.run(operations.build_claim_chain(a))
        gateway.run(operations.freeze_wallet(a))
        with pytest.raises(WalletFrozen) as frozen:
            gateway.run(operations.deposit(a, "1.00", "top-up"))
        assert frozen.value.status == 403
        with pytest.raises(TypeError):  # money is never a float; nothing is sent
            operations.deposit(a, 1.5, "top-up")  # type: ignore[arg-type]
        # Caller errors are answered once each: never retried, breakers untouched.
        assert faulty.counters(agents=False)["tools"] == {
            "get_balance": 2,
            "register": 1,
            "get_messages": 1,
            "build_claim_chain": 1,
            "freeze_wallet": 1,
            "deposit": 1,
        }
        assert set(gateway.breakers.states().values()) == {BreakerState.CLOSED}


# -- faults: retry ceiling, breaker, pacing, drops, idempotency -------------------------------


def _register(gateway: GatewayClient, keys: StaticKeyRing, agent_id: str) -> None:
    keys.add(agent_id, gateway.run(operations.register(agent_id)).api_key.get_secret_value())


def test_server_errors_are_retried_exactly_to_the_ceiling(
    faulty: SandboxProcess, prefix: str
) -> None:
    keys = StaticKeyRing(faulty.admin_key)
    config = _config(faulty, max_attempts=4, breaker_failure_threshold=100)
    with GatewayClient(config, keys, sleep=_no_sleep) as gateway:
        agent_id = f"{prefix}-0001-02020202"
        _register(gateway, keys, agent_id)
        faulty.set_faults(tools={"get_agent_reputation": {"error_rate": 1.0, "error_status": 502}})
        faulty.reset_counters()
        with pytest.raises(Unavailable) as info:
            gateway.run(operations.get_reputation(agent_id))
        assert info.value.status == 502
        assert _calls(faulty, "get_agent_reputation") == config.max_attempts
        assert _statuses(faulty, "get_agent_reputation") == {"502": config.max_attempts}


def test_an_outage_costs_threshold_requests_not_a_retry_storm(
    faulty: SandboxProcess, prefix: str
) -> None:
    """One operation down, many callers, bounded load; the breaker is per operation."""
    clock = FakeClock()
    keys = StaticKeyRing(faulty.admin_key)
    config = _config(faulty, max_attempts=3, breaker_failure_threshold=4, breaker_reset_s=30.0)
    with GatewayClient(config, keys, sleep=_no_sleep, clock=clock) as gateway:
        agent_id = f"{prefix}-0001-01010101"
        _register(gateway, keys, agent_id)
        faulty.set_faults(tools={"get_balance": {"outages": [{"duration_s": 3600}]}})
        faulty.reset_counters()

        errors = []
        for _ in range(50):
            with pytest.raises(Unavailable) as info:
                gateway.run(operations.get_balance(agent_id))
            errors.append(info.value)
        # Without a breaker: 50 calls × 3 attempts = 150 requests. With it: the threshold.
        assert _calls(faulty, "get_balance") == config.breaker_failure_threshold
        assert _statuses(faulty, "get_balance") == {"503": config.breaker_failure_threshold}
        assert [type(e) for e in errors[:2]] == [Unavailable, Unavailable]
        assert all(isinstance(e, CircuitOpen) for e in errors[2:])
        assert errors[0].status == 503
        assert gateway.run(operations.get_reputation(agent_id)).composite_score >= 0

        # Half-open after the reset period: exactly one trial request, which fails.
        clock.now += config.breaker_reset_s
        for _ in range(10):
            with pytest.raises(Unavailable):
                gateway.run(operations.get_balance(agent_id))
        assert _calls(faulty, "get_balance") == config.breaker_failure_threshold + 1
        assert gateway.breakers.states()["get_balance"] is BreakerState.OPEN

        # The outage ends; the next trial closes the breaker and calls flow again.
        faulty.clear_faults()
        clock.now += config.breaker_reset_s
        for _ in range(5):
            assert gateway.run(operations.get_balance(agent_id)).balance == Decimal(500)
        assert _calls(faulty, "get_balance") == config.breaker_failure_threshold + 1 + 5
        assert gateway.breakers.states()["get_balance"] is BreakerState.CLOSED


def test_a_free_agents_hour_is_paced_by_the_client_before_the_gateway_refuses(
    faulty: SandboxProcess, prefix: str
) -> None:
    agent_id = f"{prefix}-0001-03030303"
    keys = StaticKeyRing(faulty.admin_key)
    own = Auth.own(agent_id)
    with GatewayClient(_config(faulty), keys, sleep=_no_sleep) as gateway:
        _register(gateway, keys, agent_id)
        faulty.reset_counters()
        answered = 0
        with pytest.raises(RateLimited) as paced:
            for _ in range(200):
                gateway.run(operations.get_balance(agent_id, auth=own))
                answered += 1
        assert paced.value.paced and paced.value.retry_after is not None
        assert paced.value.retry_after > gateway.config.retry_after_max_s
        # A free key's 100 an hour gives 99 answers; the 100th would have been refused.
        assert answered == 99
        assert _statuses(faulty, "get_balance") == {"200": 99}

    # A second process that has not seen the window gets the gateway's 429, once: with no
    # limit known it cannot say when the hour frees up, so it does not retry into it (each
    # rejected call would count and extend the lockout).
    with GatewayClient(_config(faulty), keys, sleep=_no_sleep) as other:
        with pytest.raises(RateLimited) as refused:
            other.run(operations.get_balance(agent_id, auth=own))
        assert not refused.value.paced and refused.value.status == 429
        assert refused.value.retry_after is None
    assert _statuses(faulty, "get_balance") == {"200": 99, "429": 1}


def test_a_dropped_connection_is_resent_once_for_a_read_and_never_for_an_unkeyed_spend(
    faulty: SandboxProcess, prefix: str
) -> None:
    keys = StaticKeyRing(faulty.admin_key)
    config = _config(faulty, max_attempts=1, breaker_failure_threshold=100)
    agent_id = f"{prefix}-0001-04040404"

    async def main() -> None:
        async with AsyncGatewayClient(config, keys, sleep=_no_sleep_async) as gateway:
            await gateway.run(operations.register(agent_id))
            faulty.reset_counters()

            # After some error answers the gateway closes the kept-alive connection; the read
            # that follows still goes through, once.
            with pytest.raises(NotFound):
                await gateway.run(operations.get_balance(f"{prefix}-9999-ffffffff"))
            after = await gateway.send(operations.get_balance(agent_id))
            assert after.value.balance == Decimal(500)
            assert _statuses(faulty, "get_balance") == {"404": 1, "200": 1}
            faulty.reset_counters()

            # A read whose connection drops is sent once more, at once, then given up.
            faulty.set_faults(tools={"get_balance": {"drop_rate": 1.0}})
            with pytest.raises(Unavailable) as dropped:
                await gateway.run(operations.get_balance(agent_id))
            assert dropped.value.code == "connection_error" and dropped.value.maybe_processed

            # A deposit with no idempotency key that lands and then loses its answer is
            # not sent again: the gateway could not tell the second from a new one.
            faulty.set_faults(tools={"deposit": {"drop_after_commit_rate": 1.0}})
            unkeyed = dataclasses.replace(
                operations.deposit(agent_id, "7.00", "top-up"), moves_money=False
            )
            with pytest.raises(Unavailable) as lost:
                await gateway.run(unkeyed)
            assert lost.value.maybe_processed

    asyncio.run(main())
    assert _statuses(faulty, "get_balance") == {"dropped": 2}
    assert _calls(faulty, "deposit") == 1
    assert Decimal(faulty.agent(agent_id)["wallet"]["balance"]) == Decimal("507.00")


def test_a_deposit_retried_after_a_lost_answer_credits_once(
    faulty: SandboxProcess, prefix: str
) -> None:
    keys = StaticKeyRing(faulty.admin_key)
    agent_id = f"{prefix}-0001-05050505"
    config = _config(faulty, max_attempts=3, breaker_failure_threshold=100)
    with GatewayClient(config, keys, sleep=_no_sleep) as gateway:
        _register(gateway, keys, agent_id)
        faulty.reset_counters()
        key = f"job-{prefix}:{agent_id}:deposit"
        faulty.set_faults(tools={"deposit": {"drop_after_commit_rate": 1.0}})
        with pytest.raises(Unavailable) as lost:
            gateway.send(operations.deposit(agent_id, "25.00", "funding"), idempotency_key=key)
        assert lost.value.maybe_processed
        # Sent again under the same key, the drops were answered from the gateway's record.
        assert _calls(faulty, "deposit") > 1
        faulty.clear_faults()
        again = gateway.send(operations.deposit(agent_id, "25.00", "funding"), idempotency_key=key)
        assert again.value.new_balance == Decimal("525.00") and again.attempts == 1
    # However many times it was sent, the wallet was credited once.
    assert Decimal(faulty.agent(agent_id)["wallet"]["balance"]) == Decimal("525.00")


def test_timeouts_are_unavailable_and_retried(faulty: SandboxProcess, prefix: str) -> None:
    keys = StaticKeyRing(faulty.admin_key)
    config = _config(faulty, timeout_s=0.2, max_attempts=2, breaker_failure_threshold=100)
    with GatewayClient(config, keys, sleep=_no_sleep) as gateway:
        agent_id = f"{prefix}-0001-06060606"
        _register(gateway, keys, agent_id)
        faulty.set_faults(timeout_s=1.0, tools={"get_balance": {"timeout_rate": 1.0}})
        faulty.reset_counters()
        with pytest.raises(Unavailable) as info:
            gateway.run(operations.get_balance(agent_id))
        assert info.value.code == "timeout" and info.value.status is None
        assert _calls(faulty, "get_balance") == 2
