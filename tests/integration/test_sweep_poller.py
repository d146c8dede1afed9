"""The sweep's reads against the sandbox over HTTP: answers, failures, the retry ceiling."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from fleet.gateway import GatewayConfig
from fleet.monitoring.poller import READS_PER_AGENT, SWEEP_OPERATIONS, Reading, SweepPoller
from tests.conftest import SandboxProcess

pytestmark = pytest.mark.integration


def poller_for(sandbox: SandboxProcess, **config: object) -> SweepPoller:
    return SweepPoller(
        GatewayConfig(url=sandbox.gateway_url, admin_key=sandbox.admin_key, **config),  # type: ignore[arg-type]
        in_flight=16,
        timeout_s=2.0,
    )


def _ids(seeded: dict[str, object]) -> list[str]:
    return [a["agent_id"] for a in seeded["agents"]]  # type: ignore[attr-defined]


def _calls(sandbox: SandboxProcess) -> dict[str, int]:
    tools: dict[str, int] = sandbox.counters(agents=False)["tools"]
    return {name: tools.get(name, 0) for name in set(SWEEP_OPERATIONS)}


def _expected(agents: int, attempts: int = 1) -> dict[str, int]:
    return {name: SWEEP_OPERATIONS.count(name) * agents * attempts for name in SWEEP_OPERATIONS}


def test_four_reads_per_agent_with_the_admin_key(sandbox: SandboxProcess) -> None:
    healthy = _ids(sandbox.seed(10, prefix="poll", profile="healthy"))
    dead = _ids(sandbox.seed(2, prefix="polldead", profile="dead"))
    stranger = "nobody-0001-00000000"
    sandbox.reset_counters()
    poller = poller_for(sandbox)
    try:
        readings = poller.poll([*healthy, *dead, stranger])
    finally:
        poller.close()
    assert [r.agent_id for r in readings] == [*healthy, *dead, stranger]
    assert READS_PER_AGENT == 4
    # Exactly four reads per agent reached the gateway, all on the admin key.
    assert _calls(sandbox) == _expected(13)
    admin_calls = sandbox.counters()["agents"]
    assert list(admin_calls) == ["fleet-admin"]

    for r in readings[:10]:
        assert not r.failed and r.balance is not None and r.budget is not None
        assert isinstance(r.balance.balance, Decimal) and r.balance.balance == Decimal("500")
        assert isinstance(r.budget.daily_spend, Decimal)
        p99, err = Reading.latest(r.p99), Reading.latest(r.error_rate)
        assert p99 is not None and err is not None
        assert p99.data_source == err.data_source == "self_reported"
        # The agent's own figures, as the sandbox's simulated agent reports them.
        reported = sandbox.agent(r.agent_id)["metrics"]
        assert float(err.value) == pytest.approx(reported["error_rate"], abs=0.01)
        assert 0 < float(p99.value) < 1000
    for r in readings[10:12]:
        # A dead agent reports an error rate of 1 and no latency at all.
        assert not r.failed and Reading.latest(r.p99) is None
        point = Reading.latest(r.error_rate)
        assert point is not None and point.value == 1
    unknown = readings[12]
    assert unknown.failed and unknown.balance is None and unknown.budget is None
    assert [e.split(":")[0] for e in unknown.errors] == ["get_balance", "get_budget_status"]
    assert all("NotFound 404" in e for e in unknown.errors)


def test_transient_failures_are_retried_up_to_the_ceiling(
    spawn_sandbox: Callable[..., SandboxProcess],
) -> None:
    sb = spawn_sandbox("--latency-ms", "0", "--latency-jitter-ms", "0", "--seed", "7", "--memory")
    ids = _ids(sb.seed(20, prefix="flaky", profile="healthy"))
    sb.reset_counters()
    sb.set_faults(error_rate=1.0, error_status=503)
    poller = poller_for(
        sb, max_attempts=2, backoff_initial_s=0.0, backoff_max_s=0.0, breaker_failure_threshold=1000
    )
    try:
        readings = poller.poll(ids)
    finally:
        poller.close()
    assert all(r.failed and len(r.errors) == READS_PER_AGENT for r in readings)
    assert all("Unavailable 503" in e for r in readings for e in r.errors)
    # Every read twice, none a third time.
    assert _calls(sb) == _expected(len(ids), attempts=2)
    assert sb.counters(agents=False)["statuses"]["get_balance"] == {"503": 2 * len(ids)}
