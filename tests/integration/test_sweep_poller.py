"""The sweep's reads against the sandbox over HTTP: answers, failures, the retry ceiling."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fleet.gateway import GatewayConfig
from fleet.monitoring.poller import SWEEP_TOOLS, SweepPoller
from tests.conftest import SandboxProcess

pytestmark = pytest.mark.integration


def poller_for(sandbox: SandboxProcess, **config: object) -> SweepPoller:
    return SweepPoller(
        GatewayConfig(url=sandbox.gateway_url, admin_key=sandbox.admin_key, **config),
        in_flight=16,  # type: ignore[arg-type]
        timeout_s=2.0,
    )


def test_four_reads_per_agent(sandbox: SandboxProcess) -> None:
    ids = sandbox.seed(12, prefix="poll")["agent_ids"]
    bare = sandbox.seed(1, prefix="bare", sla_template=None)["agent_ids"]
    poller = poller_for(sandbox)
    try:
        readings = poller.poll([*ids, *bare, "nobody-0001-00000000"])
    finally:
        poller.close()
    assert [r.agent_id for r in readings] == [*ids, *bare, "nobody-0001-00000000"]
    for r in readings[:12]:
        assert not r.failed and r.analytics and r.balance and r.sla and r.reputation
        assert isinstance(r.balance["balance"], str)  # money stays a decimal string
        assert {"latency_p99", "error_rate"} <= r.analytics.keys()
    no_sla = readings[12]
    assert not no_sla.failed and no_sla.no_sla and no_sla.sla is None and no_sla.analytics
    stranger = readings[13]
    assert (
        stranger.failed
        and len(stranger.errors) == 4
        and all("NotFound 404" in e for e in stranger.errors)
    )


def test_transient_failures_are_retried_up_to_the_ceiling(
    spawn_sandbox: Callable[..., SandboxProcess],
) -> None:
    sb = spawn_sandbox("--latency-ms", "0", "--latency-jitter-ms", "0", "--seed", "7")
    ids = sb.seed(20, prefix="flaky")["agent_ids"]
    sb.set_faults(error_rate=1.0, error_status=503)
    poller = poller_for(
        sb, max_attempts=2, backoff_initial_s=0.0, backoff_max_s=0.0, breaker_failure_threshold=1000
    )
    try:
        readings = poller.poll(ids)
    finally:
        poller.close()
    assert all(r.failed and len(r.errors) == 4 for r in readings)
    counts = sb.counters(agent_prefix="flaky")["agents"]
    assert counts == {a: {tool: 2 for tool in SWEEP_TOOLS} for a in ids}
