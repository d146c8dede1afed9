"""Tasks on the `sla` queue: the sweep, single-agent checks, the escalation tick, burn alerts.

Public entry point for other parts of the system (the monitoring alert rules):

    task name:  sla.evaluate_agent
    kwargs:     {"agent_id": "<id>", "source": "alert:<rule>"}
                optional "counterparty": "<who the breach hurts>",
                         "amount": "<decimal string claimed>"

It checks that agent now and opens a violation episode if it is in breach;
escalation starts from there. The result names the episode (or none).
"""

from __future__ import annotations

from typing import Any

from celery import Task

from fleet.escalation.engine import evaluate, redispatch_stale
from fleet.sla import service
from fleet.sla.alerts import evaluate_burn_alerts
from tasks._base import fleet_task, heartbeat_task, runtime
from workers.app import app
from workers.queues import FleetQueue, TaskName

heartbeat = heartbeat_task(FleetQueue.SLA)


@fleet_task(TaskName.SLA_SWEEP)
def sweep(force: bool = False) -> dict[str, Any]:
    """Beat: list the agents to check and send them out in batches (one message per batch)."""
    rt = runtime()
    interval = rt.settings.schedule.sla_check_s
    plan = service.plan_sweep(rt.sla, guard_s=None if force else interval * 0.5)
    if plan is None:
        return {"skipped": "another sweep started less than half an interval ago"}
    with app.producer_or_acquire() as producer:
        for batch in plan.batches:
            # A batch not started within one interval is dropped: the next sweep checks again.
            check_batch.apply_async(
                args=(batch, plan.sweep_id), producer=producer, expires=interval
            )
    return {"sweep_id": plan.sweep_id, "agents": plan.total, "batches": len(plan.batches)}


@fleet_task(TaskName.SLA_CHECK_BATCH)
def check_batch(agent_ids: list[str], sweep_id: str | None = None) -> dict[str, Any]:
    return service.check_batch(runtime().sla, agent_ids, sweep_id=sweep_id).as_dict()


@fleet_task(TaskName.SLA_EVALUATE_AGENT, ignore_result=False)
def evaluate_agent(
    agent_id: str, source: str = "alert", counterparty: str | None = None, amount: str | None = None
) -> dict[str, Any]:
    return service.evaluate_agent(
        runtime().sla, agent_id, source, counterparty=counterparty, amount=amount
    )


@fleet_task(TaskName.SLA_ESCALATION_TICK, bind=True)
def escalation_tick(self: Task) -> dict[str, Any]:
    """Beat: tiers come due by an episode's age, between checks too."""
    engine = runtime().sla.engine()
    sent = evaluate(engine)
    again = redispatch_stale(engine)
    return {"sent": len(sent), "sent_again": len(again)}


@fleet_task(TaskName.SLA_BURN_ALERTS)
def burn_alerts() -> dict[str, Any]:
    return evaluate_burn_alerts(runtime().sla_alerts).as_dict()
