"""Queue topology and routing: the one place that decides where a task runs.

Callers never pick a queue. A task's dotted name starts with its queue's name
(``provisioning.provision_fleet``, ``escalation.tier4.freeze``), and
``TASK_ROUTES`` maps those name patterns to queues.
"""

from __future__ import annotations

from enum import StrEnum

from kombu import Exchange, Queue


class FleetQueue(StrEnum):
    PROVISIONING = "provisioning"
    METRICS = "metrics"
    SLA = "sla"
    ESCALATION_TIER1 = "escalation.tier1"
    ESCALATION_TIER2 = "escalation.tier2"
    ESCALATION_TIER3 = "escalation.tier3"
    ESCALATION_TIER4 = "escalation.tier4"
    AUDIT = "audit"
    ROUTING = "routing"


ALL_QUEUES: tuple[FleetQueue, ...] = tuple(FleetQueue)


class TaskName(StrEnum):
    """Every task's dotted name: the contract other systems send to, so each is written once."""

    PROVISION_FLEET = "provisioning.provision_fleet"
    PROVISION_AGENT = "provisioning.provision_agent"
    RESUME_STALLED = "provisioning.resume_stalled"
    RESUME_INTERRUPTED = "provisioning.resume_interrupted"
    ROTATE_DUE_KEYS = "provisioning.rotate_due_keys"
    ROTATE_KEY = "provisioning.rotate_key"
    RETIRE_AGENT = "provisioning.retire_agent"
    UPGRADE_TIER = "provisioning.upgrade_tier"
    # The autoscaler: its decision pass (beat), its actions, and the approved switch to enforce.
    SCALING_EVALUATE = "provisioning.scaling.evaluate"
    SCALING_SCALE_UP = "provisioning.scaling.scale_up"
    SCALING_RETIRE = "provisioning.scaling.retire"
    SCALING_ENFORCE = "provisioning.scaling.enforce"

    METRICS_SWEEP = "metrics.sweep"
    POLL_BATCH = "metrics.poll_batch"
    DELIVER_ALERTS = "metrics.deliver_alerts"
    ENFORCE_RETENTION = "metrics.enforce_retention"
    CHECK_BEHAVIOUR = "metrics.check_behaviour"
    INGEST_TASK_LOGS = "metrics.ingest_task_logs"
    INGEST_HEARTBEATS = "metrics.ingest_heartbeats"
    SILENCE_PASS = "metrics.silence"

    SLA_SWEEP = "sla.sweep"
    SLA_CHECK_BATCH = "sla.check_batch"
    SLA_EVALUATE_AGENT = "sla.evaluate_agent"
    SLA_ESCALATION_TICK = "sla.escalation_tick"
    SLA_BURN_ALERTS = "sla.burn_alerts"

    TIER1_REMEDIATE = "escalation.tier1.remediate"
    TIER2_REROUTE = "escalation.tier2.reroute"
    TIER3_NOTIFY = "escalation.tier3.notify"
    TIER3_RESOLVE = "escalation.tier3.resolve"
    TIER4_FREEZE = "escalation.tier4.freeze"

    AUDIT_APPEND_BATCH = "audit.append_batch"
    AUDIT_MIRROR = "audit.mirror"
    AUDIT_CHECKPOINT = "audit.checkpoint"
    AUDIT_RETENTION = "audit.retention"
    AUDIT_APPROVALS_SWEEP = "audit.approvals_sweep"
    AUDIT_RELEASE_AGENT = "audit.release_agent"
    AUDIT_COMPLIANCE_REPORT = "audit.compliance_report"
    AUDIT_FINOPS_REVIEW = "audit.finops_review"

    # The kill switch (fleet/control): on the audit queue, beside the approvals sweep.
    CONTROL_RESUME_LOOP = "audit.control.resume_loop"
    CONTROL_RELEASE_FLEET = "audit.control.release_fleet"
    CONTROL_SYNC = "audit.control.sync"
    CONTROL_FREEZE_WALLETS = "audit.control.freeze_wallets"

    SUBMIT_TASK = "routing.submit_task"
    SUBMIT_TASKS = "routing.submit_tasks"
    FLUSH_WORK_RECORDS = "routing.flush_records"

    BUDGET_SWEEP = "routing.budgets.sweep"
    BUDGET_DRAIN_LEDGER = "routing.budgets.drain_ledger"
    BUDGET_RECORD_PAUSE = "routing.budgets.record_pause"
    BUDGET_RESUME = "routing.budgets.resume"
    BUDGET_RAISE = "routing.budgets.raise_limit"


def heartbeat_name(queue: FleetQueue) -> str:
    """Each queue's canary task; named after the queue, so it routes there."""
    return f"{queue.value}.heartbeat"


# Direct exchange, one binding per queue: nothing fans out behind our back.
EXCHANGE = Exchange("fleet", type="direct", durable=True)

TASK_QUEUES = tuple(Queue(q.value, EXCHANGE, routing_key=q.value, durable=True) for q in ALL_QUEUES)

TASK_ROUTES = {
    f"{q.value}.*": {"queue": q.value, "exchange": EXCHANGE.name, "routing_key": q.value}
    for q in ALL_QUEUES
}


def queue_for(task_name: str) -> FleetQueue | None:
    """The queue a task name routes to (longest matching prefix), or None."""
    matches = [q for q in ALL_QUEUES if task_name.startswith(q.value + ".")]
    return max(matches, key=lambda q: len(q.value)) if matches else None
