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


ALL_QUEUES: tuple[FleetQueue, ...] = tuple(FleetQueue)

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
