"""The latest per-agent snapshot in Redis: what the last sweep saw of each agent.

One hash per agent, ``fleet:snapshot:{agent_id}``, written in pipelines by the
metrics sweep and read by SLA checks (as a cross-check), alerts, the API and
`fleet status`. Values are strings: money as decimal strings, ratios as
decimal fractions, so nothing is lost to float formatting.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from decimal import Decimal
from enum import StrEnum

import redis

from fleet.hotstate import KEY_PREFIX, read_hash, write_hash


class Health(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    CRITICAL = "critical"
    # The poll failed: we do not know, and say so rather than guess.
    UNKNOWN = "unknown"


def snapshot_key(agent_id: str) -> str:
    return f"{KEY_PREFIX}snapshot:{agent_id}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    agent_id: str
    polled_at: float
    health: Health
    latency_p50: float | None = None
    latency_p99: float | None = None
    error_rate: float | None = None
    tool_call_volume: int | None = None
    task_completion_rate: float | None = None
    reputation: float | None = None
    balance: Decimal | None = None
    burn_rate_per_hour: Decimal | None = None
    sla_compliant: bool | None = None
    sla_margin_pct: float | None = None
    breached_terms: tuple[str, ...] = ()
    error: str | None = None  # why the poll failed, when health is UNKNOWN
    fleet: str | None = None
    sweep_id: str | None = None  # the sweep that took it
    # Two writers share the hash, each its own fields: the heartbeat ingest the
    # measurements and the health class, the wallet poll the money.
    heartbeat_at: float | None = None  # sent_at of the last heartbeat believed
    wallet_read_at: float | None = None
    wallet_error: str | None = None  # why the last wallet read failed
    # What the work plane measured of the agent's tasks (fleet/work/measured.py), beside
    # what the agent reports: the third writer, with fields of its own.
    measured_latency_p50: float | None = None
    measured_latency_p99: float | None = None
    measured_error_rate: float | None = None
    measured_cost_per_task: float | None = None
    measured_tasks: int | None = None
    measured_at: float | None = None

    def to_redis(self) -> dict[str, str]:
        out: dict[str, str] = {}
        # Not dataclasses.asdict: it deep-copies every value, and this runs for
        # every agent on every sweep.
        for name in _FIELD_NAMES:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool):
                out[name] = "1" if value else "0"
            elif isinstance(value, tuple):
                out[name] = ",".join(value)
            else:
                out[name] = str(value)
        return out

    @classmethod
    def from_redis(cls, raw: dict[str, str]) -> Snapshot:
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            value = raw.get(f.name)
            if value is None:
                continue
            kind = str(f.type)
            if f.name == "health":
                kwargs[f.name] = Health(value)
            elif f.name == "breached_terms":
                kwargs[f.name] = tuple(v for v in value.split(",") if v)
            elif "bool" in kind:
                kwargs[f.name] = value == "1"
            elif "Decimal" in kind:
                kwargs[f.name] = Decimal(value)
            elif "int" in kind and "float" not in kind:
                kwargs[f.name] = int(value)
            elif "float" in kind:
                kwargs[f.name] = float(value)
            else:
                kwargs[f.name] = value
        # A snapshot only the wallet poll has written yet (no heartbeat believed):
        # its health is not known, and its money is as old as the wallet read.
        kwargs.setdefault("health", Health.UNKNOWN)
        kwargs.setdefault("polled_at", kwargs.get("wallet_read_at", 0.0))
        return cls(**kwargs)  # type: ignore[arg-type]


_FIELD_NAMES = tuple(f.name for f in fields(Snapshot))


def queue_snapshots(
    pipe: redis.client.Pipeline, snapshots: list[Snapshot], ttl_s: int | None = None
) -> None:
    """Add the writes of ``snapshots`` to a pipeline that also carries other writes."""
    for snap in snapshots:
        key = snapshot_key(snap.agent_id)
        pipe.delete(key)
        write_hash(pipe, key, snap.to_redis())
        if ttl_s:
            pipe.expire(key, ttl_s)


def queue_fields(
    pipe: redis.client.Pipeline, agent_id: str, values: dict[str, str], ttl_s: int | None = None
) -> None:
    """Overwrite only ``values`` of an agent's snapshot: for a writer that owns those
    fields and must not erase the others'."""
    key = snapshot_key(agent_id)
    write_hash(pipe, key, values)
    if ttl_s:
        pipe.expire(key, ttl_s)


def write_snapshots(r: redis.Redis, snapshots: list[Snapshot], ttl_s: int | None = None) -> None:
    """All of a batch in one round trip."""
    pipe = r.pipeline(transaction=False)
    queue_snapshots(pipe, snapshots, ttl_s)
    pipe.execute()


def read_snapshot(r: redis.Redis, agent_id: str) -> Snapshot | None:
    raw = read_hash(r, snapshot_key(agent_id))
    return Snapshot.from_redis(raw) if raw else None
