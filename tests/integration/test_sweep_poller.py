"""The wallet poll's reads against the sandbox over HTTP: the key each agent's plan gave
it, two reads per agent, a 429 counted as the plan's defect and never retried."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from fleet.gateway import GatewayConfig, StaticKeyRing
from fleet.monitoring.poller import READS_PER_AGENT, SWEEP_OPERATIONS, SweepPoller
from tests.conftest import SandboxProcess

pytestmark = pytest.mark.integration


def poller_for(
    sandbox: SandboxProcess, keys: dict[str, str] | None = None, **config: object
) -> SweepPoller:
    return SweepPoller(
        GatewayConfig(url=sandbox.gateway_url, admin_key=sandbox.admin_key, **config),  # type: ignore[arg-type]
        in_flight=16,
        timeout_s=2.0,
        keys=StaticKeyRing(sandbox.admin_key, keys or {}),
    )


def _keys(seeded: dict[str, object]) -> dict[str, str]:
    return {a["agent_id"]: a["api_key"] for a in seeded["agents"]}  # type: ignore[attr-defined]


def _calls(sandbox: SandboxProcess) -> dict[str, int]:
    tools: dict[str, int] = sandbox.counters(agents=False)["tools"]
    return {name: tools.get(name, 0) for name in set(SWEEP_OPERATIONS)}


def _expected(agents: int, attempts: int = 1) -> dict[str, int]:
    return {name: SWEEP_OPERATIONS.count(name) * agents * attempts for name in SWEEP_OPERATIONS}


def test_two_reads_per_agent_through_the_key_its_plan_chose(sandbox: SandboxProcess) -> None:
    own = _keys(sandbox.seed(6, prefix="pollown", profile="healthy", tier="pro"))
    by_admin = list(_keys(sandbox.seed(4, prefix="polladm", profile="healthy")))
    stranger = "nobody-0001-00000000"
    rows = [(a, False) for a in own] + [(a, True) for a in [*by_admin, stranger]]
    sandbox.reset_counters()
    poller = poller_for(sandbox, own)
    try:
        readings = poller.poll(rows)
    finally:
        poller.close()
    assert [r.agent_id for r in readings] == [a for a, _ in rows]
    assert READS_PER_AGENT == 2
    # Exactly two reads per agent reached the gateway, each on the key the row named.
    assert _calls(sandbox) == _expected(11)
    callers = sandbox.counters()["agents"]
    assert {a: sum(t.values()) for a, t in callers.items()} == {
        **{a: 2 for a in own},
        "fleet-admin": 2 * (len(by_admin) + 1),
    }
    for r in readings[:10]:
        assert not r.failed and r.balance is not None and r.budget is not None
        assert isinstance(r.balance.balance, Decimal) and r.balance.balance == Decimal("500")
        assert isinstance(r.budget.daily_spend, Decimal)
        assert (r.calls, r.rate_limited, r.paced, r.charged) == (2, 0, 0, Decimal("0"))
    unknown = readings[10]
    assert unknown.failed and unknown.balance is None and unknown.budget is None
    assert [e.split(":")[0] for e in unknown.errors] == ["get_balance", "get_budget_status"]
    assert all("NotFound 404" in e for e in unknown.errors)


def test_a_full_window_is_a_counted_defect_held_back_or_answered_429_never_retried(
    sandbox: SandboxProcess,
) -> None:
    keys = _keys(sandbox.seed(1, prefix="pollfree", profile="healthy"))  # a free key: 100/h
    [agent_id] = keys
    poller = poller_for(sandbox, keys)
    try:
        readings = [poller.poll([(agent_id, False)])[0] for _ in range(50)]
    finally:
        poller.close()
    # 99 answers; the hundredth call our client held back, knowing the window full.
    assert sum(r.calls for r in readings) == 99
    assert (sum(r.paced for r in readings), sum(r.rate_limited for r in readings)) == (1, 0)
    assert readings[-1].failed and "RateLimited" in readings[-1].errors[-1]
    # A process that has not seen the window yet sends, and the gateway answers 429.
    sandbox.reset_counters()
    fresh = poller_for(sandbox, keys, max_attempts=3)
    try:
        [reading] = fresh.poll([(agent_id, False)])
    finally:
        fresh.close()
    assert reading.rate_limited == 2 and reading.balance is None and reading.budget is None
    # Not retried: a retry would only count against the window again...
    assert _calls(sandbox) == _expected(1)
    # ...not even on the admin key, with a 429 that says how soon to come back.
    sandbox.reset_counters()
    sandbox.set_faults(rate_limit_next=2, retry_after_s=0.05)
    again = poller_for(sandbox, max_attempts=3)
    try:
        [reading] = again.poll([(agent_id, True)])
    finally:
        again.close()
        sandbox.clear_faults()
    assert reading.rate_limited == 2
    assert _calls(sandbox) == _expected(1)


def test_transient_failures_are_retried_up_to_the_ceiling(
    spawn_sandbox: Callable[..., SandboxProcess],
) -> None:
    sb = spawn_sandbox("--latency-ms", "0", "--latency-jitter-ms", "0", "--seed", "7", "--memory")
    ids = list(_keys(sb.seed(20, prefix="flaky", profile="healthy")))
    sb.reset_counters()
    sb.set_faults(error_rate=1.0, error_status=503)
    poller = poller_for(
        sb, max_attempts=2, backoff_initial_s=0.0, backoff_max_s=0.0, breaker_failure_threshold=1000
    )
    try:
        readings = poller.poll([(a, True) for a in ids])
    finally:
        poller.close()
    assert all(r.failed and len(r.errors) == READS_PER_AGENT for r in readings)
    assert all("Unavailable 503" in e for r in readings for e in r.errors)
    # Every read twice, none a third time.
    assert _calls(sb) == _expected(len(ids), attempts=2)
    assert sb.counters(agents=False)["statuses"]["get_balance"] == {"503": 2 * len(ids)}
