"""The beat schedule, built from settings.

Each periodic entry starts a dispatcher that fans out; its message expires
within one interval so a backlog never piles sweeps on top of each other.
"""

from __future__ import annotations

from typing import Any

from config.settings import Settings
from workers.queues import ALL_QUEUES


def _entry(task: str, every_s: float, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "task": task,
        "schedule": every_s,
        "kwargs": kwargs or {},
        "options": {"expires": every_s * 0.9},
    }


def build_beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    schedule: dict[str, dict[str, Any]] = {}
    # A canary per queue: proves end to end that each queue has a live
    # consumer, and gives `fleet status` its queue round-trip time.
    for queue in ALL_QUEUES:
        schedule[f"heartbeat-{queue.value}"] = _entry(
            f"{queue.value}.heartbeat", settings.schedule.heartbeat_s
        )
    # Agents whose provisioning stopped moving (a worker died mid-step) are
    # picked up again; the lock and step records make a duplicate harmless.
    schedule["provisioning-resume-stalled"] = _entry(
        "provisioning.resume_stalled",
        settings.schedule.provisioning_resume_s,
        kwargs={"stall_s": settings.schedule.provisioning_stall_s},
    )
    # Hourly is plenty for a 90-day rotation; each due agent gets its own task.
    schedule["provisioning-rotate-keys"] = _entry(
        "provisioning.rotate_due_keys", settings.schedule.key_rotation_check_s
    )
    # Every agent polled once a minute (operations §2). The message expires
    # within the interval, the sweep takes a per-tick dedup key and a
    # no-overlap lock, and its batches expire before the next tick: a slow
    # sweep is skipped, never stacked, and a second beat doubles nothing.
    schedule["metrics-sweep"] = _entry("metrics.sweep", settings.schedule.metrics_sweep_s)
    # Behavioural signals judge hour-long windows of task logs: five minutes is plenty.
    schedule["metrics-behaviour"] = _entry(
        "metrics.check_behaviour", settings.schedule.behaviour_check_s
    )
    # Daily is enough for a 90-day retention of hourly history.
    schedule["metrics-retention"] = _entry(
        "metrics.enforce_retention", settings.schedule.retention_s
    )
    # The SLA's own rhythm (5 min by default): one dispatcher message fans the
    # fleet out in batches, each expiring within the interval.
    schedule["sla-sweep"] = _entry("sla.sweep", settings.schedule.sla_check_s)
    # Tiers come due by an episode's age, not only when a check lands: a
    # one-minute tick starts each tier within a minute of its threshold.
    schedule["sla-escalation-tick"] = _entry(
        "sla.escalation_tick", settings.schedule.escalation_tick_s
    )
    # The fastest burn alert's short window is 5 min: evaluate about every minute.
    schedule["sla-burn-alerts"] = _entry("sla.burn_alerts", settings.schedule.burn_alert_s)
    return schedule
