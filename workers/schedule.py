"""The beat schedule, built from settings.

Each periodic entry starts a dispatcher that fans out; its message expires
within one interval so a backlog never piles sweeps on top of each other.
"""

from __future__ import annotations

from typing import Any

from config.settings import Settings
from workers.queues import ALL_QUEUES


def _entry(task: str, every_s: float, **options: Any) -> dict[str, Any]:
    return {"task": task, "schedule": every_s, "options": {"expires": every_s * 0.9, **options}}


def build_beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    schedule: dict[str, dict[str, Any]] = {}
    # A canary per queue: proves end to end that each queue has a live
    # consumer, and gives `fleet status` its queue round-trip time.
    for queue in ALL_QUEUES:
        schedule[f"heartbeat-{queue.value}"] = _entry(
            f"{queue.value}.heartbeat", settings.schedule.heartbeat_s
        )
    return schedule
