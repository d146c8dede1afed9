"""Redis as hot state (not the broker): latest snapshots, locks, counters.

Key names live here so every process agrees on them.
"""

from __future__ import annotations

import functools

import redis

KEY_PREFIX = "fleet:"


def heartbeat_key(queue: str) -> str:
    return f"{KEY_PREFIX}heartbeat:{queue}"


@functools.lru_cache(maxsize=8)
def connect(url: str) -> redis.Redis:
    """One pooled client per URL per process."""
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
