"""The beat schedule, built from settings.

Each periodic entry starts a dispatcher that fans out; its message expires
within one interval so a backlog never piles sweeps on top of each other.
"""

from __future__ import annotations

from typing import Any

from config.settings import Settings
from workers.queues import ALL_QUEUES


def _entry(task: str, every_s: float, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"task": task, "schedule": every_s, "kwargs": kwargs or {}, "options": {"expires": every_s * 0.9}}


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
        "provisioning.resume_stalled", settings.schedule.provisioning_resume_s,
        kwargs={"stall_s": settings.schedule.provisioning_stall_s},
    )
    # Hourly is plenty for a 90-day rotation; each due agent gets its own task.
    schedule["provisioning-rotate-keys"] = _entry("provisioning.rotate_due_keys", settings.schedule.key_rotation_check_s)
    return schedule
