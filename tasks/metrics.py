"""Tasks on the `metrics` queue: the monitoring sweep and what hangs off it.

Public entry points for other systems:

    task name:  metrics.ingest_task_logs
    kwargs:     {"records": [<task log>, ...]}     (see fleet.monitoring.behaviour)

    task name:  metrics.sweep
    kwargs:     {"tick": "<optional id>"}          a sweep now; beat sends it every
                                                   FLEET_SCHEDULE__METRICS_SWEEP_S

A sweep is one `metrics.sweep` message that plans it and sends one
`metrics.poll_batch` per FLEET_METRICS__BATCH_SIZE agents (the agent ids are
in the message, so Flower shows which agents each batch covered); every agent's
outcome is in its snapshot and in the sweep record (`fleet status`, GET
/api/v1/monitoring/sweeps/{id}).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import httpx
import redis
from celery import Task
from pydantic import ValidationError

from fleet.clock import SystemClock, utc_from_timestamp
from fleet.gateway import GatewayConfig
from fleet.monitoring import behaviour, notify
from fleet.monitoring import sweep as sweeping
from fleet.monitoring.alerts import Handoff, load_alerts
from fleet.monitoring.poller import SweepPoller
from tasks import _deps
from tasks._base import heartbeat_task
from workers.app import app
from workers.queues import FleetQueue

log = logging.getLogger(__name__)

heartbeat = heartbeat_task(FleetQueue.METRICS.value)

ESCALATION_TASK = "sla.evaluate_agent"


# --- per-process wiring (built lazily, after the worker forks) --------------------------------


def _notify(alert_ids: list[str]) -> None:
    deliver_alerts.apply_async(args=(alert_ids,))


def _escalate(pairs: list[tuple[str, str]]) -> None:
    with app.producer_or_acquire() as producer:
        for agent_id, source in pairs:
            app.send_task(
                ESCALATION_TASK,
                kwargs={"agent_id": agent_id, "source": source},
                producer=producer,
                ignore_result=True,
            )


@functools.cache
def monitor() -> sweeping.MonitorDeps:
    s = _deps.settings()
    return sweeping.MonitorDeps(
        redis=_deps.hot(),
        sessions=_deps.sessions(),
        policy=s.policy,
        metrics=s.metrics,
        interval_s=s.schedule.metrics_sweep_s,
        clock=SystemClock(),
        handoff=Handoff(
            notify=_notify,
            escalate=_escalate,
            traffic_cut_fraction=s.policy.escalation.traffic_cut_fraction,
        ),
    )


@functools.cache
def poller() -> SweepPoller:
    s = _deps.settings()
    config = dataclasses.replace(
        GatewayConfig.from_settings(s),
        breaker_failure_threshold=s.metrics.breaker_failure_threshold,
    )
    return SweepPoller(config, in_flight=s.metrics.in_flight, timeout_s=s.metrics.poll_timeout_s)


@functools.cache
def _webhooks() -> httpx.Client:
    return httpx.Client(headers={"User-Agent": "fleet-commander-alerts"})


def reset() -> None:
    """Forget what was built (tests that change settings in-process)."""
    if poller.cache_info().currsize:
        poller().close()
    for cached in (monitor, poller, _webhooks):
        cached.cache_clear()


# --- the sweep -------------------------------------------------------------------------------


@app.task(name="metrics.sweep", acks_late=True, ignore_result=True)
def sweep(tick: str | None = None) -> dict[str, Any]:
    """Beat: plan a sweep (once per tick, never overlapping) and send its batches."""
    plan = sweeping.start_sweep(monitor(), tick)
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
    }


@app.task(
    name="metrics.poll_batch",
    bind=True,
    acks_late=True,
    ignore_result=True,
    autoretry_for=(redis.ConnectionError,),
    max_retries=3,
    retry_backoff=1,
    retry_backoff_max=10,
)
def poll_batch(
    self: Task, sweep_id: str, batch: int, agents: dict[str, list[str]]
) -> dict[str, Any]:
    outcome = sweeping.run_batch(monitor(), poller().poll, sweep_id, batch, agents)
    return {
        "sweep_id": sweep_id,
        "batch": batch,
        "agents": outcome.agents,
        "unknown": outcome.unknown,
        "changes": outcome.changes,
        "skipped": outcome.skipped,
        "finished": outcome.finished,
        "poll_s": round(outcome.poll_s, 3),
        "total_s": round(outcome.total_s, 3),
    }


# --- alerts ----------------------------------------------------------------------------------


@app.task(name="metrics.deliver_alerts", bind=True, acks_late=True, ignore_result=True)
def deliver_alerts(
    self: Task, alert_ids: list[str], urls: list[str] | None = None, attempt: int = 1
) -> int:
    """Post alert notices to the configured webhooks; a URL that failed transiently is retried later, bounded."""
    policy = _deps.settings().policy.alerts
    if not (policy.webhooks or policy.routes):
        return 0
    alerts = load_alerts(_deps.sessions(), alert_ids)
    failed = notify.deliver(policy, alerts, _webhooks(), only=urls)
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


@app.task(name="metrics.enforce_retention", acks_late=True, ignore_result=True)
def enforce_retention() -> dict[str, int]:
    deps = monitor()
    return sweeping.enforce_retention(deps.sessions, deps.policy, deps.now())


@app.task(name="metrics.check_behaviour", acks_late=True, ignore_result=True)
def check_behaviour() -> int:
    return len(behaviour.check_and_apply(monitor()))


@app.task(name="metrics.ingest_task_logs", acks_late=True, ignore_result=True)
def ingest_task_logs(records: list[dict[str, Any]]) -> int:
    deps = monitor()
    logs, bad = [], 0
    for record in records:
        try:
            logs.append(behaviour.TaskLog.model_validate(record))
        except ValidationError:
            bad += 1
    if bad:
        log.warning("ignored %d invalid task log record(s) of %d", bad, len(records))
    return behaviour.ingest(deps.redis, logs, deps.policy.alerts.behaviour.window_s, deps.now())
