"""Tool-call volume per fleet and hour, as the agents report it in their heartbeats.

Each heartbeat carries the tool calls of the interval it closes; the ingest adds them to
the counter of the agent's fleet for the hour the heartbeat was sent, in the same Redis
script that applies the heartbeat, so a redelivered or replayed heartbeat is not counted
twice. The counters expire after :data:`KEEP_S`, which covers the longest history the
console shows.

Agents that never heartbeat (polled only through their wallets) report no tool calls:
their volume is not in these counters, and the console says the chart is of reported calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import redis

from fleet.hotstate import KEY_PREFIX

HOUR_S = 3600
KEEP_S = 32 * 24 * HOUR_S


def hour_of(timestamp: float) -> int:
    """The start of the hour ``timestamp`` falls in, in epoch seconds."""
    return int(timestamp // HOUR_S) * HOUR_S


def segment_view(fleet: str, segment: str) -> str:
    """The name a fleet's segment is counted and viewed under ("/" is in no fleet name)."""
    return f"{fleet}/{segment}"


def volume_key(view: str, hour: int) -> str:
    """A fleet's or a segment's (:func:`segment_view`) counter for one hour."""
    return f"{KEY_PREFIX}volume:{view}:{hour}"


def hourly_volume(
    r: redis.Redis, fleets: Sequence[str], now: datetime, hours: int
) -> list[tuple[datetime, int | None]]:
    """The last ``hours`` hours (oldest first, the current one last) with the tool calls
    reported in each, summed over ``fleets``; None for an hour nobody reported in."""
    current = hour_of(now.timestamp())
    starts = [current - HOUR_S * (hours - 1 - i) for i in range(hours)]
    keys = [volume_key(f, h) for h in starts for f in fleets]
    values = r.mget(keys) if keys else []
    out: list[tuple[datetime, int | None]] = []
    width = len(fleets)
    for i, start in enumerate(starts):
        counts = [int(v) for v in values[i * width : (i + 1) * width] if v is not None]
        at = datetime.fromtimestamp(start, UTC)
        out.append((at, sum(counts) if counts else None))
    return out


__all__ = ["KEEP_S", "hour_of", "hourly_volume", "segment_view", "volume_key"]
