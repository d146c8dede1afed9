"""Tasks on the `metrics` queue: the monitoring sweep and what hangs off it.

Public entry points for other systems:

    task name:  metrics.ingest_task_logs
    kwargs:     {"records": [<task log>, ...]}     (see fleet.monitoring.behaviour)

    task name:  metrics.ingest_heartbeats
    kwargs:     {"events": [<bus event>, ...]}     what `fleet stream` hands on (see
                                                   fleet.monitoring.ingest); events are
                                                   applied once however often they come

    task name:  metrics.sweep
    kwargs:     {"tick": "<optional id>"}          a sweep now; beat sends it every
                                                   FLEET_SCHEDULE__METRICS_SWEEP_S

A sweep is the wallet poll: one `metrics.sweep` message that plans it (the
tick's slot of the fleet, each agent on the admin key or its own, inside the
rate windows; a plan that cannot fit is refused and shown by `fleet status`) and
sends one `metrics.poll_batch` per FLEET_METRICS__BATCH_SIZE agents (the rows
[agent_id, fleet, via_admin] are in the message, so Flower shows which agents
each batch covered); every agent's outcome is in its snapshot's money fields and
in the sweep record (`fleet status`, GET /api/v1/monitoring/sweeps/{id}).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task
from pydantic import ValidationError

from fleet.clock import utc_from_timestamp
from fleet.monitoring import behaviour, ingest, notify, silence
from fleet.monitoring import sweep as sweeping
from fleet.monitoring.alerts import load_alerts
from tasks._base import fleet_task, heartbeat_task, runtime
from workers.app import app
from workers.queues import FleetQueue, TaskName

log = logging.getLogger(__name__)

heartbeat = heartbeat_task(FleetQueue.METRICS)


# --- the sweep -------------------------------------------------------------------------------


@fleet_task(TaskName.METRICS_SWEEP)
def sweep(tick: str | None = None) -> dict[str, Any]:
    """Beat: plan a sweep (once per tick, never overlapping) and send its batches."""
    plan = sweeping.start_sweep(runtime().monitor, tick)
    if plan is None:
        return {"started": False}
    # A batch not started by the deadline is dropped: the next sweep polls afresh.
    expires = utc_from_timestamp(plan.deadline)
    with app.producer_or_acquire() as producer:
        for number, batch in enumerate(plan.batches):
            poll_batch.apply_async(
                args=(plan.sweep_id, number, batch), expires=expires, producer=producer
            )
    return {
        "started": True,
        "sweep_id": plan.sweep_id,
        "agents": plan.agents,
        "batches": len(plan.batches),
        "slot": plan.slot,
        "slots": plan.wallet.slots,
    }


@fleet_task(
    TaskName.POLL_BATCH,
    bind=True,
    autoretry_for=(redis.ConnectionError,),
    max_retries=3,
    retry_backoff=1,
    retry_backoff_max=10,
)
def poll_batch(self: Task, sweep_id: str, batch: int, agents: list[Any]) -> dict[str, Any]:
    rt = runtime()
    rows = sweeping.parse_rows(agents)
    outcome = sweeping.run_batch(rt.monitor, rt.poller.poll, sweep_id, batch, rows)
    return {
        "sweep_id": sweep_id,
        "batch": batch,
        "agents": outcome.agents,
        "failed": outcome.failed,
        "rate_limited": outcome.rate_limited,
        "skipped": outcome.skipped,
        "finished": outcome.finished,
        "poll_s": round(outcome.poll_s, 3),
        "total_s": round(outcome.total_s, 3),
    }


# --- heartbeats ------------------------------------------------------------------------------


@fleet_task(
    TaskName.INGEST_HEARTBEATS,
    autoretry_for=(redis.ConnectionError,),
    max_retries=5,
    retry_backoff=1,
    retry_backoff_max=10,
)
def ingest_heartbeats(events: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of bus events from the stream consumer: verified, then applied once each."""
    return ingest.ingest_heartbeats(runtime().heartbeat_ingest, events).as_dict()


@fleet_task(TaskName.SILENCE_PASS)
def silence_pass() -> dict[str, Any]:
    """Beat: silent agents turn unknown, then critical; the fleet view from the snapshots."""
    outcome = silence.silence_pass(runtime().silence)
    return {
        "agents": outcome.agents,
        "unknown": outcome.unknown,
        "critical": outcome.critical,
        "wall_s": round(outcome.wall_s, 3),
    }


# --- alerts ----------------------------------------------------------------------------------


@fleet_task(TaskName.DELIVER_ALERTS, bind=True)
def deliver_alerts(
    self: Task, alert_ids: list[str], urls: list[str] | None = None, attempt: int = 1
) -> int:
    """Post alert notices to the webhooks; a URL that failed transiently is retried, bounded."""
    rt = runtime()
    policy = rt.settings.policy.alerts
    if not (policy.webhooks or policy.routes):
        return 0
    alerts = load_alerts(rt.sessions, alert_ids)
    failed = notify.deliver(policy, alerts, rt.webhooks, only=urls)
    if failed and attempt < policy.webhook_max_attempts:
        # A new message rather than a wait: the worker slot is free for the sweep meanwhile.
        raise self.retry(
            kwargs={"alert_ids": alert_ids, "urls": failed, "attempt": attempt + 1},
            countdown=policy.webhook_retry_s * attempt,
            max_retries=policy.webhook_max_attempts,
        )
    if failed:
        log.error(
            "alert notices %s not delivered to %d webhook(s) after %d attempts",
            alert_ids[:5],
            len(failed),
            attempt,
        )
    return len(alerts)


# --- history, behaviour ----------------------------------------------------------------------


@fleet_task(TaskName.ENFORCE_RETENTION)
def enforce_retention() -> dict[str, int]:
    deps = runtime().monitor
    return sweeping.enforce_retention(deps.sessions, deps.policy, deps.now())


@fleet_task(TaskName.CHECK_BEHAVIOUR)
def check_behaviour() -> int:
    return len(behaviour.check_and_apply(runtime().monitor))


@fleet_task(TaskName.INGEST_TASK_LOGS)
def ingest_task_logs(records: list[dict[str, Any]]) -> int:
    deps = runtime().monitor
    logs, bad = [], 0
    for record in records:
        try:
            logs.append(behaviour.TaskLog.model_validate(record))
        except ValidationError:
            bad += 1
    if bad:
        log.warning("ignored %d invalid task log record(s) of %d", bad, len(records))
    return behaviour.ingest(deps.redis, logs, deps.policy.alerts.behaviour.window_s, deps.now())
