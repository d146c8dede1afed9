"""Tasks on the `audit` queue.

Events travel as JSON in ``audit.append_batch`` messages of up to
``audit.batch_size`` events (sent by the runtime's audit sink, see
workers/runtime.py); the worker appends each message in one transaction.
Appending is idempotent on event ids, so a redelivered message adds nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
from typing import Any

import redis
from celery import Task
from pydantic import ValidationError

from fleet.approvals import NotApproved
from fleet.approvals.gate import dispatch_approved
from fleet.approvals.release import release_agent as release_agent_now
from fleet.audit.compliance import fleets_of, previous_month, produce_report
from fleet.audit.events import AuditEvent
from fleet.audit.mirror import MirrorRun, Outbox
from fleet.audit.retention import ArchiveResult, archive_expired
from fleet.audit.signing import MissingSigningKey
from tasks._base import TRANSIENT, fleet_task, heartbeat_task, runtime
from workers.queues import FleetQueue, TaskName
from workers.runtime import AUDIT_IN_FLIGHT

log = logging.getLogger(__name__)

heartbeat = heartbeat_task(FleetQueue.AUDIT)

_MIRROR_NUDGE_KEY = "fleet:audit:mirror-nudged"


# An audit entry must not be dropped because the database was busy, or because the
# signing key is not there yet (`fleet audit init-key`; never made here): both retry
# without a ceiling, backing off to one attempt a minute.
@fleet_task(
    TaskName.AUDIT_APPEND_BATCH,
    bind=True,
    # The database or Redis restarting: the batch waits for them (Redis: the mirror nudge);
    # the signing key not made yet: it waits for `fleet audit init-key`.
    autoretry_for=(*TRANSIENT, MissingSigningKey),
    retry_backoff=1,
    retry_backoff_max=60,
    max_retries=None,
)
def append_batch(self: Task, events: list[dict[str, Any]]) -> int:
    valid = []
    for raw in events:
        try:
            valid.append(AuditEvent.model_validate(raw))
        except ValidationError as exc:
            # Producers validate when they build events; this is version skew. Keep the evidence.
            log.error("unreadable audit event kept out of the chain: %s; event: %r", exc, raw)
    rt = runtime()
    result = rt.audit_log.append(valid)
    # Appended (or known already): the producer's copy is no longer needed.
    with contextlib.suppress(redis.RedisError):
        rt.redis.hdel(AUDIT_IN_FLIGHT, self.request.id)
    if result.appended:
        _nudge_mirror()
    return result.appended


def _nudge_mirror() -> None:
    rt = runtime()
    if not rt.settings.policy.audit.mirror_enabled:
        return
    # At most one queued nudge a second, however fast entries arrive: a run drains everything.
    if rt.redis.set(_MIRROR_NUDGE_KEY, "1", nx=True, px=1000):
        mirror.apply_async()


@fleet_task(TaskName.AUDIT_MIRROR, bind=True)
def mirror(self: Task) -> dict[str, Any]:
    rt = runtime()
    policy = rt.settings.policy.audit
    if not policy.mirror_enabled:
        return {"disabled": True}
    owner = f"{self.request.hostname or socket.gethostname()}:{os.getpid()}"
    run: MirrorRun = Outbox(rt.audit_log, owner=owner, lease_s=policy.mirror_lease_s).run(
        rt.mirror_gateway, max_entries=policy.mirror_run_max
    )
    if run.error:
        log.warning("audit mirroring paused (%d waiting): %s", run.pending, run.error)
    elif not run.busy and run.pending:
        mirror.apply_async()  # more waiting: hand over to a fresh task rather than hold this one
    return dataclasses.asdict(run)


@fleet_task(TaskName.AUDIT_CHECKPOINT)
def checkpoint() -> int | None:
    signed = runtime().audit_log.checkpoint()
    return signed.size if signed else None


@fleet_task(TaskName.AUDIT_RETENTION)
def retention() -> dict[str, Any] | None:
    rt = runtime()
    policy = rt.settings.policy
    result: ArchiveResult | None = archive_expired(
        rt.audit_log, policy.retention.audit_days, respect_mirror=policy.audit.mirror_enabled
    )
    if result is None:
        return None
    log.info("archived audit entries %d..%d to %s", result.first_seq, result.last_seq, result.file)
    return {"first_seq": result.first_seq, "last_seq": result.last_seq, "file": str(result.file)}


@fleet_task(TaskName.AUDIT_APPROVALS_SWEEP)
def approvals_sweep() -> dict[str, int]:
    rt = runtime()
    expired = rt.approvals.expire_due()
    sent = dispatch_approved(rt.approvals, rt.send)
    return {"expired": len(expired), "dispatched": len(sent)}


# The gateway client's own retries are the one retry layer for the unfreeze call.
@fleet_task(TaskName.AUDIT_RELEASE_AGENT)
def release_agent(agent_id: str, approval_id: str) -> bool:
    try:
        rt = runtime()
        return release_agent_now(
            rt.approvals, rt.sessions, rt.gateway_sync, request_id=approval_id, agent_id=agent_id
        )
    except NotApproved as exc:
        log.warning("not releasing %s: %s", agent_id, exc)
        return False


@fleet_task(TaskName.AUDIT_COMPLIANCE_REPORT)
def compliance_report(fleet: str | None = None, period: str | None = None) -> list[str]:
    """One fleet's report, or every fleet's for the previous month (the monthly beat)."""
    rt = runtime()
    period = period or previous_month(rt.clock.now())
    fleets = [fleet] if fleet else fleets_of(rt.audit_log.engine) or [rt.settings.fleet_name]
    written = []
    for name in fleets:
        _, json_path, _ = produce_report(rt.settings, rt.audit_log, rt.approvals, name, period)
        written.append(str(json_path))
    return written
