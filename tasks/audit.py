"""Tasks on the `audit` queue, and the producer side of it.

Importing this module installs the process's audit sink: ``fleet.audit.record``
then sends to the queue, or, when the broker cannot be reached, appends
straight to the log (a decision taken while Redis is down is still audited).
Producers may also call::

    enqueue(event_or_events)              # AuditEvent(s) built with fleet.audit.build_event; queue only
    enqueue_audit(actor=..., action=..., subject=..., details=...)   # = fleet.audit.record, injectable

Events travel as JSON in ``audit.append_batch`` messages of up to
``audit.batch_size`` events; the worker appends each message in one
transaction. Appending is idempotent on event ids, so a redelivered message
adds nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

from celery import Celery, Task
from celery.schedules import crontab
from pydantic import ValidationError
from redis import Redis
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings, get_settings
from fleet import audit
from fleet.approvals import Approvals, NotApproved, RequestView
from fleet.approvals.release import TASK as RELEASE_TASK
from fleet.approvals.release import release_agent as release_agent_now
from fleet.audit.compliance import fleets_of, previous_month, produce_report
from fleet.audit.events import AuditEvent
from fleet.audit.log import AuditLog
from fleet.audit.mirror import MirrorRun, Outbox
from fleet.audit.retention import ArchiveResult, archive_expired
from fleet.clock import SystemClock
from fleet.gateway import GatewayClient, GatewayConfig, Unavailable
from fleet.storage.db import engine_for, session_factory
from tasks._base import heartbeat_task
from workers.app import app
from workers.queues import FleetQueue

log = logging.getLogger(__name__)

heartbeat = heartbeat_task(FleetQueue.AUDIT.value)

_MIRROR_NUDGE_KEY = "fleet:audit:mirror-nudged"


# ----------------------------------------------------------------- per-process wiring (built lazily, after fork)


def _settings() -> Settings:
    return get_settings()


@functools.cache
def audit_log() -> AuditLog:
    return AuditLog.from_settings(_settings())


@functools.cache
def _sessions() -> sessionmaker[Session]:
    return session_factory(engine_for(_settings().sqlalchemy_url))


@functools.cache
def approvals() -> Approvals:
    return Approvals(_sessions(), _settings().policy.approvals, clock=SystemClock())


@functools.cache
def _mirror_client() -> GatewayClient:
    # One attempt per call: the outbox is the retry layer, not a second one on top.
    return GatewayClient(
        dataclasses.replace(GatewayConfig.from_settings(_settings()), max_attempts=1)
    )


@functools.cache
def gateway_client() -> GatewayClient:
    return GatewayClient.from_settings(_settings())


@functools.cache
def _redis() -> Redis:
    from fleet.hotstate import connect

    return connect(_settings().redis_url)


def reset() -> None:
    """Forget what was built (tests that change settings in-process)."""
    for cached in (audit_log, _sessions, approvals, _mirror_client, gateway_client, _redis):
        cached.cache_clear()


# ----------------------------------------------------------------- producers


def enqueue(events: AuditEvent | Sequence[AuditEvent], *, celery_app: Celery | None = None) -> None:
    """Send events to the audit queue, batch_size per message (celery_app: another broker, for tests)."""
    batch = [events] if isinstance(events, AuditEvent) else list(events)
    size = _settings().policy.audit.batch_size
    sender = celery_app or app
    with sender.producer_or_acquire() as producer:
        for start in range(0, len(batch), size):
            payload = [e.model_dump(mode="json") for e in batch[start : start + size]]
            sender.send_task(
                append_batch.name, args=(payload,), producer=producer, ignore_result=True
            )


def enqueue_audit(**fields: Any) -> None:
    """``fleet.audit.record`` as a dependency to inject: builds one event and sends it through the sink."""
    audit.record(**fields)


def enqueue_or_append(events: Sequence[AuditEvent]) -> None:
    """The process's sink: the queue, or the log directly when the broker cannot be reached.

    A decision taken at the CLI while Redis is down is still audited.
    """
    try:
        enqueue(events)
    except Exception as exc:  # noqa: BLE001 - whatever stops the queue, the entry must still be written
        log.warning("audit queue unreachable (%s); appending %d entries directly", exc, len(events))
        audit_log().append(list(events))


audit.use_sink(enqueue_or_append)


def dispatch_approved(
    requests: Approvals | None = None, *, celery_app: Celery | None = None
) -> list[str]:
    """Send the task of every approved request not sent yet; returns their ids.

    Sending before marking means a crash in between sends it again; the task
    claims its approval (consume) before acting, so the second copy does nothing.
    """
    service = requests or approvals()
    sent = []
    for view in service.awaiting_dispatch():
        send(view, celery_app=celery_app)
        service.mark_dispatched(view.request_id)
        sent.append(view.request_id)
    return sent


def send(view: RequestView, *, celery_app: Celery | None = None) -> None:
    assert view.task is not None
    (celery_app or app).send_task(
        view.task, kwargs={**view.task_kwargs, "approval_id": view.request_id}, ignore_result=True
    )


# ----------------------------------------------------------------- tasks


# An audit entry must not be dropped because the database was busy: database
# errors retry without a ceiling, backing off to one attempt a minute.
@app.task(
    name="audit.append_batch",
    bind=True,
    acks_late=True,
    ignore_result=True,
    autoretry_for=(OperationalError,),
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
    result = audit_log().append(valid)
    if result.appended:
        _nudge_mirror()
    return result.appended


def _nudge_mirror() -> None:
    if not _settings().policy.audit.mirror_enabled:
        return
    # At most one queued nudge a second, however fast entries arrive: a run drains everything.
    if _redis().set(_MIRROR_NUDGE_KEY, "1", nx=True, px=1000):
        mirror.apply_async()


@app.task(name="audit.mirror", bind=True, acks_late=True, ignore_result=True)
def mirror(self: Task) -> dict[str, Any]:
    policy = _settings().policy.audit
    if not policy.mirror_enabled:
        return {"disabled": True}
    owner = f"{self.request.hostname or socket.gethostname()}:{os.getpid()}"
    run: MirrorRun = Outbox(audit_log(), owner=owner, lease_s=policy.mirror_lease_s).run(
        _mirror_client().call, max_entries=policy.mirror_run_max
    )
    if run.error:
        log.warning("audit mirroring paused (%d waiting): %s", run.pending, run.error)
    elif not run.busy and run.pending:
        mirror.apply_async()  # more waiting: hand over to a fresh task rather than hold this one
    return dataclasses.asdict(run)


@app.task(name="audit.checkpoint", acks_late=True, ignore_result=True)
def checkpoint() -> int | None:
    signed = audit_log().checkpoint()
    return signed.size if signed else None


@app.task(name="audit.retention", acks_late=True, ignore_result=True)
def retention() -> dict[str, Any] | None:
    policy = _settings().policy
    result: ArchiveResult | None = archive_expired(
        audit_log(), policy.retention.audit_days, respect_mirror=policy.audit.mirror_enabled
    )
    if result is None:
        return None
    log.info("archived audit entries %d..%d to %s", result.first_seq, result.last_seq, result.file)
    return {"first_seq": result.first_seq, "last_seq": result.last_seq, "file": str(result.file)}


@app.task(name="audit.approvals_sweep", acks_late=True, ignore_result=True)
def approvals_sweep() -> dict[str, int]:
    expired = approvals().expire_due()
    sent = dispatch_approved()
    return {"expired": len(expired), "dispatched": len(sent)}


@app.task(
    name="audit.release_agent",
    acks_late=True,
    ignore_result=True,
    autoretry_for=(Unavailable,),
    retry_backoff=2,
    retry_backoff_max=300,
    max_retries=10,
)
def release_agent(agent_id: str, approval_id: str) -> bool:
    try:
        return release_agent_now(
            approvals(), _sessions(), gateway_client(), request_id=approval_id, agent_id=agent_id
        )
    except NotApproved as exc:
        log.warning("not releasing %s: %s", agent_id, exc)
        return False


assert release_agent.name == RELEASE_TASK


@app.task(name="audit.compliance_report", acks_late=True, ignore_result=True)
def compliance_report(fleet: str | None = None, period: str | None = None) -> list[str]:
    """One fleet's report, or every fleet's for the previous month (the monthly beat)."""
    settings = _settings()
    period = period or previous_month(SystemClock().now())
    fleets = [fleet] if fleet else fleets_of(audit_log().engine) or [settings.fleet_name]
    written = []
    for name in fleets:
        _, json_path, _ = produce_report(
            settings, audit_log(), approvals(), name, period, gateway_client().call
        )
        written.append(str(json_path))
    return written


# ----------------------------------------------------------------- beat


def beat_entries(settings: Settings) -> dict[str, dict[str, Any]]:
    audit_policy, approvals_policy = settings.policy.audit, settings.policy.approvals

    def every(task: str, seconds: float) -> dict[str, Any]:
        return {"task": task, "schedule": seconds, "options": {"expires": seconds * 0.9}}

    entries = {
        # Signs the head when fewer than checkpoint_every entries came since the last checkpoint.
        "audit-checkpoint": every("audit.checkpoint", audit_policy.checkpoint_interval_s),
        # Daily is enough for a retention counted in months.
        "audit-retention": every("audit.retention", settings.schedule.retention_s),
        # Expiry must be prompt: a request past its time is denied within a sweep.
        "audit-approvals-sweep": every("audit.approvals_sweep", approvals_policy.sweep_s),
        # The 1st of the month, for the month just ended.
        "audit-compliance-monthly": {
            "task": "audit.compliance_report",
            "schedule": crontab(minute=30, hour=0, day_of_month=1),
            "options": {"expires": 86400},
        },
    }
    if audit_policy.mirror_enabled:
        # Appends nudge the outbox; this resumes it after a gateway outage.
        entries["audit-mirror"] = every("audit.mirror", audit_policy.mirror_every_s)
    return entries


app.conf.beat_schedule.update(beat_entries(get_settings()))
