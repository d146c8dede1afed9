"""The runtime builds each part once, including parts built from other parts."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from fleet.audit.events import AuditEvent
from fleet.escalation.actions import ActionDeps
from fleet.provisioning.pipeline import ProvisioningDeps
from fleet.sla.service import SlaDeps
from tests.conftest import RecordingRuntime


def test_parts_are_built_once_and_shared_between_threads(runtime: RecordingRuntime) -> None:
    seen: list[tuple[ActionDeps, ProvisioningDeps, SlaDeps]] = []

    def build() -> None:
        seen.append((runtime.escalation, runtime.provisioning, runtime.sla))

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(seen) == 4 and all(len({id(s[i]) for s in seen}) == 1 for i in range(3))
    escalation, provisioning, sla = seen[0]
    assert escalation.gateway is provisioning.gateway is runtime.gateway
    # The SLA check reads snapshots, not the gateway; its alerts speak through the shared client.
    assert runtime.sla_alerts.gateway is runtime.gateway
    assert sla.sessions is escalation.sessions and sla.redis is runtime.redis


def test_the_audit_sink_falls_back_to_the_log_when_the_queue_is_down(
    runtime: RecordingRuntime,
) -> None:
    from fleet import audit

    def down(events: Sequence[AuditEvent]) -> None:
        raise ConnectionError("broker down")

    runtime._enqueue_audit = down
    audit.record(actor="t", action="restart_agent", subject="a-0001-00000001", details={})
    assert runtime.audit_log.head().seq == 1
