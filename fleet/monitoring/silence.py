"""Silence is a signal, and the fleet view: one pass over every monitored agent on beat.

Dead agents do not report themselves. Every ``schedule.metrics_sweep_s``:

- an agent whose last heartbeat was sent more than ``heartbeat_unknown_after`` ×
  the policy's heartbeat interval ago becomes UNKNOWN, more than
  ``heartbeat_critical_after`` × ago CRITICAL (an agent that never sent one counts
  from its creation); its snapshot's ``error`` says for how long. The next heartbeat
  believed sets its health from its measurements again: it recovers by itself.
- the fleet view (health counts, fleet p99, error rate, SLA compliance, burn) is
  folded from the snapshots and stored where the sweep stored it
  (``sweep.HEALTH_KEY``, read by ``sweep.fleet_health()``), with one history row per
  fleet and the fleet alert rules applied to it.

The health change is a compare-and-set on ``heartbeat_at``: a heartbeat that lands
while the pass runs is never overwritten by a verdict on the one before it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy
from fleet.clock import Clock, utc_from_timestamp
from fleet.monitoring import alerts as alerts_mod
from fleet.monitoring.aggregate import ALL_FLEETS, FleetHealth, Partial
from fleet.monitoring.models import FleetSweep
from fleet.monitoring.rules import Change, FleetRules, evaluate_fleet
from fleet.monitoring.snapshot import Health, Snapshot, snapshot_key
from fleet.monitoring.sweep import HEALTH_KEY, HEALTH_META_KEY, SEGMENTS_KEY, fleet_state_key
from fleet.monitoring.volume import segment_view
from fleet.storage.db import write_session
from fleet.storage.records import Agent

CHUNK = 1000

# KEYS: snapshot key. ARGV: heartbeat_at as read ("" for none), health, error, fleet, agent id,
# polled_at. Sets the verdict only if no heartbeat landed since it was read.
_VERDICT = """
local seen = redis.call('HGET', KEYS[1], 'heartbeat_at') or ''
if seen ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'health', ARGV[2], 'error', ARGV[3], 'fleet', ARGV[4],
           'agent_id', ARGV[5])
if redis.call('HEXISTS', KEYS[1], 'polled_at') == 0 then
  redis.call('HSET', KEYS[1], 'polled_at', ARGV[6])
end
return 1
"""


@dataclass(frozen=True)
class SilenceLimits:
    interval_s: float
    unknown_after: float
    critical_after: float

    @classmethod
    def from_policy(cls, policy: Policy) -> SilenceLimits:
        m = policy.monitoring
        return cls(m.heartbeat_interval_s, m.heartbeat_unknown_after, m.heartbeat_critical_after)

    def verdict(self, silent_s: float) -> Health | None:
        if silent_s > self.critical_after * self.interval_s:
            return Health.CRITICAL
        if silent_s > self.unknown_after * self.interval_s:
            return Health.UNKNOWN
        return None


@dataclass
class SilenceDeps:
    redis: redis.Redis
    sessions: sessionmaker[Session]
    policy: Policy
    clock: Clock
    handoff: alerts_mod.Handoff
    statuses: Sequence[str]
    state_ttl_s: int
    fleet_rules: FleetRules = field(init=False)

    def __post_init__(self) -> None:
        self.fleet_rules = FleetRules.from_policy(self.policy.alerts)


@dataclass
class SilenceOutcome:
    agents: int = 0
    unknown: int = 0  # turned unknown by this pass
    critical: int = 0  # turned critical by this pass
    fleets: dict[str, FleetHealth] = field(default_factory=dict)
    segments: dict[str, FleetHealth] = field(default_factory=dict)
    wall_s: float = 0.0


def silence_pass(deps: SilenceDeps) -> SilenceOutcome:
    began = time.perf_counter()
    r, now = deps.redis, deps.clock.now().timestamp()
    limits = SilenceLimits.from_policy(deps.policy)
    verdict = r.register_script(_VERDICT)
    out = SilenceOutcome()
    partials: dict[str, Partial] = {}
    by_segment: dict[str, Partial] = {}  # "fleet/segment" -> its agents
    agents = _monitored(deps.sessions, deps.statuses)
    out.agents = len(agents)
    for start in range(0, len(agents), CHUNK):
        chunk = agents[start : start + CHUNK]
        pipe = r.pipeline(transaction=False)
        for _, agent_id, _, _ in chunk:
            pipe.hgetall(snapshot_key(agent_id))
        raws: list[dict[str, str]] = pipe.execute()
        pipe = r.pipeline(transaction=False)
        changed: list[tuple[int, Health, str]] = []
        for i, ((fleet, agent_id, created_at, _), raw) in enumerate(zip(chunk, raws, strict=True)):
            seen = raw.get("heartbeat_at", "")
            since = float(seen) if seen else created_at.timestamp()
            health = limits.verdict(now - since)
            if health is None or raw.get("health") == health.value:
                continue
            error = (
                f"no heartbeat for {now - since:.0f} s "
                f"(last sent {utc_from_timestamp(since):%Y-%m-%dT%H:%M:%SZ})"
                if seen
                else f"no heartbeat since it was created {now - since:.0f} s ago"
            )
            verdict(
                keys=[snapshot_key(agent_id)],
                args=[seen, health.value, error, fleet, agent_id, repr(now)],
                client=pipe,
            )
            changed.append((i, health, error))
        for (i, health, error), applied in zip(changed, pipe.execute(), strict=True):
            if applied:
                raws[i] = {**raws[i], "health": health.value, "error": error}
                out.unknown += health is Health.UNKNOWN
                out.critical += health is Health.CRITICAL
        for (fleet, agent_id, _, prefix), raw in zip(chunk, raws, strict=True):
            snap = _snapshot(agent_id, fleet, raw, now)
            partials.setdefault(fleet, Partial()).add(snap)
            if prefix:
                by_segment.setdefault(segment_view(fleet, prefix), Partial()).add(snap)
    out.fleets = _fleet_view(partials)
    out.segments = {name: p.health(name) for name, p in sorted(by_segment.items())}
    _store_view(deps, out.fleets, out.segments, now, began)
    out.wall_s = time.perf_counter() - began
    return out


def _monitored(
    sessions: sessionmaker[Session], statuses: Sequence[str]
) -> list[tuple[str, str, datetime, str]]:
    query = (
        select(Agent.fleet, Agent.agent_id, Agent.created_at, Agent.id_prefix)
        .where(Agent.status.in_(list(statuses)))
        .order_by(Agent.fleet, Agent.agent_id)
    )
    with sessions() as s:
        return [(f, a, c, p or "") for f, a, c, p in s.execute(query)]


def _snapshot(agent_id: str, fleet: str, raw: dict[str, str], now: float) -> Snapshot:
    """The agent's snapshot as the fleet view counts it; no snapshot yet is unknown."""
    if "health" not in raw:
        return Snapshot(agent_id, now, Health.UNKNOWN, fleet=fleet)
    try:
        return Snapshot.from_redis({"agent_id": agent_id, "polled_at": repr(now), **raw})
    except (ValueError, TypeError):
        return Snapshot(agent_id, now, Health.UNKNOWN, fleet=fleet)


def _fleet_view(partials: dict[str, Partial]) -> dict[str, FleetHealth]:
    total = Partial()
    out: dict[str, FleetHealth] = {}
    for fleet, partial in sorted(partials.items()):
        out[fleet] = partial.health(fleet)
        total.merge(partial)
    out[ALL_FLEETS] = total.health(ALL_FLEETS)
    return out


def _store_view(
    deps: SilenceDeps,
    fleets: dict[str, FleetHealth],
    segments: dict[str, FleetHealth],
    now: float,
    began: float,
) -> None:
    """Where the sweep kept it (readers unchanged), the segments beside it, one history row
    per fleet and per segment, the fleet rules (fleets only)."""
    r = deps.redis
    view_id = f"view-{int(now)}"
    pipe = r.pipeline(transaction=True)
    pipe.delete(HEALTH_KEY)
    pipe.hset(HEALTH_KEY, mapping={f: orjson.dumps(h.as_dict()) for f, h in fleets.items()})
    pipe.delete(SEGMENTS_KEY)
    if segments:
        pipe.hset(SEGMENTS_KEY, mapping={n: orjson.dumps(h.as_dict()) for n, h in segments.items()})
    pipe.hset(
        HEALTH_META_KEY,
        mapping={
            "sweep_id": view_id,
            "started_at": repr(now),
            "finished_at": repr(now),
            "wall_s": f"{time.perf_counter() - began:.3f}",
        },
    )
    pipe.execute()
    stamp = utc_from_timestamp(now)
    with write_session(deps.sessions) as session:
        for h in [*fleets.values(), *segments.values()]:
            session.merge(
                FleetSweep(
                    sweep_id=view_id,
                    fleet=h.fleet,
                    started_at=stamp,
                    finished_at=stamp,
                    agents=h.agents,
                    healthy=h.healthy,
                    degraded=h.degraded,
                    critical=h.critical,
                    unknown=h.unknown,
                    latency_p99=h.latency_p99,
                    error_rate=h.error_rate,
                    sla_compliance=h.sla_compliance,
                    burn_rate_per_hour=str(h.burn_rate_per_hour),
                )
            )
    names = [f for f in fleets if f != ALL_FLEETS]
    if not names:
        return
    raw_states = r.mget([fleet_state_key(f) for f in names])
    changes: list[Change] = []
    pipe = r.pipeline(transaction=False)
    for fleet, raw in zip(names, raw_states, strict=True):
        state: dict[str, Any] = orjson.loads(raw) if raw else {}
        changes.extend(evaluate_fleet(deps.fleet_rules, state, fleet, fleets[fleet].as_dict(), now))
        pipe.set(fleet_state_key(fleet), orjson.dumps(state), ex=deps.state_ttl_s)
    if changes:
        alerts_mod.apply_changes(deps.sessions, changes, deps.handoff, now)
    pipe.execute()


__all__ = ["SilenceDeps", "SilenceLimits", "SilenceOutcome", "silence_pass"]
