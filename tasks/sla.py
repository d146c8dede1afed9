"""Tasks on the `sla` queue: the compliance sweep, single-agent checks, the escalation tick, burn alerts.

Public entry point for other parts of the system (the monitoring alert rules):

    task name:  sla.evaluate_agent
    kwargs:     {"agent_id": "<id>", "source": "alert:<rule>"}
                optional "counterparty": "<who the breach hurts>", "amount": "<decimal string claimed>"

It checks that agent now and opens a violation episode if it is in breach;
escalation starts from there. The result names the episode (or none).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from celery import Task

from fleet.clock import SystemClock
from fleet.escalation.engine import Message, evaluate, redispatch_stale
from fleet.sla import service
from fleet.sla.alerts import AlertDeps, evaluate_burn_alerts
from tasks import _deps
from tasks._base import heartbeat_task
from workers.app import app
from workers.queues import FleetQueue

heartbeat = heartbeat_task(FleetQueue.SLA.value)


def send_messages(messages: Sequence[Message]) -> None:
    """The engine's sender: every message over one producer connection; routes by task name."""
    if not messages:
        return
    with app.producer_or_acquire() as producer:
        for name, kwargs in messages:
            app.send_task(name, kwargs=kwargs, producer=producer, ignore_result=True)


@functools.cache
def deps() -> service.SlaDeps:
    s = _deps.settings()
    return service.SlaDeps(
        _deps.sessions(),
        _deps.hot(),
        s.policy,
        s.sla,
        SystemClock(),
        send_messages,
    )


@app.task(name="sla.sweep", acks_late=True, ignore_result=True)
def sweep(force: bool = False) -> dict[str, Any]:
    """Beat: list the agents to check and send them out in batches (one message per batch)."""
    settings = _deps.settings()
    interval = settings.schedule.sla_check_s
    plan = service.plan_sweep(deps(), guard_s=None if force else interval * 0.5)
    if plan is None:
        return {"skipped": "another sweep started less than half an interval ago"}
    with app.producer_or_acquire() as producer:
        for batch in plan.batches:
            # A batch not started within one interval is dropped: the next sweep checks again.
            check_batch.apply_async(
                args=(batch, plan.sweep_id), producer=producer, expires=interval
            )
    return {"sweep_id": plan.sweep_id, "agents": plan.total, "batches": len(plan.batches)}


@app.task(name="sla.check_batch", acks_late=True, ignore_result=True)
def check_batch(agent_ids: list[str], sweep_id: str | None = None) -> dict[str, Any]:
    return service.check_batch(deps(), agent_ids, sweep_id=sweep_id).as_dict()


@app.task(name="sla.evaluate_agent", acks_late=True)
def evaluate_agent(
    agent_id: str, source: str = "alert", counterparty: str | None = None, amount: str | None = None
) -> dict[str, Any]:
    return service.evaluate_agent(
        deps(), agent_id, source, counterparty=counterparty, amount=amount
    )


@app.task(name="sla.escalation_tick", bind=True, acks_late=True, ignore_result=True)
def escalation_tick(self: Task) -> dict[str, Any]:
    """Beat: tiers come due by an episode's age, between checks too."""
    engine = deps().engine()
    sent = evaluate(engine)
    again = redispatch_stale(engine)
    return {"sent": len(sent), "sent_again": len(again)}


@app.task(name="sla.burn_alerts", acks_late=True, ignore_result=True)
def burn_alerts() -> dict[str, Any]:
    d = deps()
    return evaluate_burn_alerts(AlertDeps(d.sessions, d.policy, d.clock, _deps.gateway())).as_dict()


def reset() -> None:
    deps.cache_clear()
