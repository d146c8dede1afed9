"""Heartbeats in: bus events → verified → the agent's snapshot, rules, SLA and rollups.

The stream consumer hands events on in batches (``metrics.ingest_heartbeats``);
any worker may take any batch, and a batch may come twice (the consumer hands on
at least once). Per event::

    validate the event      malformed → counted, dropped
    verify the signature    with the public key on record for the event's source
                            (Agent.extra["public_key"], cached): unsigned, forged,
                            another agent's source → counted per reason, dropped
    order it                per agent, atomically in Redis, the last event id and
                            seq applied: an event id not above it was applied
                            already (a redelivery: counted as duplicate, not a
                            rejection); a new event with a seq not above it is a
                            replay (counted, dropped)
    apply it                snapshot measurement fields + health class + SLA
                            compliance, the agent's alert rules, the hourly rollup

The snapshot write and the per-agent order advance together in one Lua call,
so two workers racing on one agent never let an older heartbeat overwrite a
newer one, and a batch lost mid-way is redone whole on redelivery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy
from fleet.clock import Clock
from fleet.gateway.stream import BusEvent
from fleet.hotstate import KEY_PREFIX, read_hash
from fleet.monitoring import alerts as alerts_mod
from fleet.monitoring import volume
from fleet.monitoring.evaluate import apply_judgements, judge_snapshot, sla_terms, with_sla
from fleet.monitoring.health import classify
from fleet.monitoring.heartbeats import (
    EVENT_TYPE,
    Heartbeat,
    HeartbeatRejected,
    Rejection,
    load_public_key,
    verify_heartbeat,
)
from fleet.monitoring.rules import AgentRules, Change
from fleet.monitoring.snapshot import Snapshot, snapshot_key
from fleet.storage.records import Agent

log = logging.getLogger(__name__)

COUNTS_KEY = f"{KEY_PREFIX}heartbeats:counts"  # accepted, duplicate, superseded, rejected.<why>
REJECTED_PREFIX = "rejected."


def rejected_seen_key(event_id: int) -> str:
    return f"{KEY_PREFIX}heartbeats:rejected:{event_id}"


# The fields of the snapshot hash the heartbeat ingest owns (the wallet poll owns the
# money); agent_id and polled_at make the hash readable whichever writer came first.
MEASUREMENT_FIELDS = (
    "agent_id",
    "polled_at",
    "health",
    "latency_p50",
    "latency_p99",
    "error_rate",
    "tool_call_volume",
    "task_completion_rate",
    "sla_compliant",
    "sla_margin_pct",
    "breached_terms",
    "heartbeat_at",
    "error",
    "fleet",
)


def order_key(agent_id: str) -> str:
    return f"{KEY_PREFIX}heartbeats:last:{agent_id}"


def rule_state_key(agent_id: str) -> str:
    # The same key the sweep kept each agent's rule state under: one state per agent.
    return f"{KEY_PREFIX}monitor:agent:{agent_id}"


# KEYS: order key, snapshot key, rule state key, then the volume counters to add to.
# ARGV: event id, seq, snapshot ttl (0: none), rule state JSON, state ttl, volume ttl,
#       one amount per volume counter, number of fields to set, then field/value pairs,
#       then fields to delete.
# Applies only when the event id is above the last one applied: returns 1; 2 when that
# very event was applied meanwhile (the same batch on two workers), 0 when a later one was.
# The volume is added in the same step, so a batch redone never counts its calls twice.
_COMMIT = """
local last = tonumber(redis.call('HGET', KEYS[1], 'e') or '0')
if last == tonumber(ARGV[1]) then return 2 end
if last > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'e', ARGV[1], 's', ARGV[2])
local counters = #KEYS - 3
for i = 1, counters do
  redis.call('INCRBY', KEYS[3 + i], ARGV[6 + i])
  redis.call('EXPIRE', KEYS[3 + i], tonumber(ARGV[6]))
end
local at = 7 + counters
local n = tonumber(ARGV[at])
local values = {}
for i = at + 1, at + 2 * n do values[#values + 1] = ARGV[i] end
if n > 0 then redis.call('HSET', KEYS[2], unpack(values)) end
local gone = {}
for i = at + 1 + 2 * n, #ARGV do gone[#gone + 1] = ARGV[i] end
if #gone > 0 then redis.call('HDEL', KEYS[2], unpack(gone)) end
local ttl = tonumber(ARGV[3])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl); redis.call('EXPIRE', KEYS[2], ttl) end
redis.call('SET', KEYS[3], ARGV[4], 'EX', tonumber(ARGV[5]))
return 1
"""


@dataclass(frozen=True)
class AgentRecord:
    """What the ingest needs of an agent from the database."""

    fleet: str
    public_key: Ed25519PublicKey | None
    terms: Mapping[str, Any]
    segment: str = ""  # the manifest group's id prefix


class AgentDirectory:
    """Agents' fleets, identity keys and SLA terms from the database, cached for ``ttl_s``.

    An id not in the database is remembered as unknown for the same time, so a
    flood of forged sources costs one query per id per ``ttl_s``, not one per event.
    """

    def __init__(self, sessions: sessionmaker[Session], policy: Policy, ttl_s: float) -> None:
        self._sessions = sessions
        self._policy = policy
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, AgentRecord | None]] = {}
        self._lock = threading.Lock()

    def lookup(self, agent_ids: Iterable[str]) -> dict[str, AgentRecord | None]:
        now = time.monotonic()
        out: dict[str, AgentRecord | None] = {}
        missing: list[str] = []
        with self._lock:
            for agent_id in set(agent_ids):
                hit = self._cache.get(agent_id)
                if hit is not None and now - hit[0] < self._ttl_s:
                    out[agent_id] = hit[1]
                else:
                    missing.append(agent_id)
        if missing:
            loaded = self._load(missing)
            with self._lock:
                for agent_id in missing:
                    record = loaded.get(agent_id)
                    self._cache[agent_id] = (now, record)
                    out[agent_id] = record
        return out

    def _load(self, agent_ids: Sequence[str]) -> dict[str, AgentRecord]:
        out: dict[str, AgentRecord] = {}
        for start in range(0, len(agent_ids), 500):
            chunk = agent_ids[start : start + 500]
            with self._sessions() as s:
                rows = s.execute(
                    select(Agent.agent_id, Agent.fleet, Agent.extra, Agent.id_prefix).where(
                        Agent.agent_id.in_(chunk)
                    )
                ).all()
            terms = sla_terms(self._sessions, self._policy, [row[0] for row in rows])
            for agent_id, fleet, extra, prefix in rows:
                out[agent_id] = AgentRecord(
                    fleet, _public_key(agent_id, extra), terms[agent_id], prefix or ""
                )
        return out


def _public_key(agent_id: str, extra: object) -> Ed25519PublicKey | None:
    hex_key = extra.get("public_key") if isinstance(extra, dict) else None
    if not isinstance(hex_key, str):
        return None
    try:
        return load_public_key(hex_key)
    except ValueError as exc:
        log.error("agent %s: its recorded public key is unusable: %s", agent_id, exc)
        return None


@dataclass
class IngestOutcome:
    events: int = 0
    accepted: int = 0
    duplicate: int = 0  # applied already (a redelivered batch, a consumer's re-read)
    superseded: int = 0  # a newer heartbeat of the agent was applied first
    ignored: int = 0  # not a heartbeat
    rejected: dict[str, int] = field(default_factory=dict)
    changes: int = 0
    # (event id, reason) of refused events that have an id: counted once across deliveries.
    rejected_events: list[tuple[int, str]] = field(default_factory=list)

    def reject(self, reason: Rejection, event_id: int | None = None) -> None:
        self.rejected[reason.value] = self.rejected.get(reason.value, 0) + 1
        if event_id is not None:
            self.rejected_events.append((event_id, reason.value))

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "superseded": self.superseded,
            "ignored": self.ignored,
            "rejected": dict(self.rejected),
            "changes": self.changes,
        }


@dataclass
class IngestDeps:
    redis: redis.Redis
    sessions: sessionmaker[Session]
    policy: Policy
    clock: Clock
    handoff: alerts_mod.Handoff
    directory: AgentDirectory
    snapshot_ttl_s: int
    state_ttl_s: int
    # How long a refused event's id is remembered, so that a batch delivered again
    # (a message redelivered within the broker's visibility timeout, or a stream re-read
    # from the last saved cursor) counts it once. One key per refused event: bounded by
    # this window, not the gateway's 24 h retention, since anyone may publish forgeries.
    rejected_seen_s: int = 2 * 3600
    agent_rules: AgentRules = field(init=False)

    def __post_init__(self) -> None:
        self.agent_rules = AgentRules.from_policy(self.policy.alerts)


@dataclass(frozen=True)
class _Verified:
    event_id: int
    heartbeat: Heartbeat
    record: AgentRecord


Verify = Callable[[str, object, Ed25519PublicKey | None], Heartbeat]


def ingest_heartbeats(
    deps: IngestDeps, raw_events: Sequence[object], verify: Verify = verify_heartbeat
) -> IngestOutcome:
    """Verify and apply a batch of bus events; every event is accounted for in the outcome
    and in the counters at ``COUNTS_KEY``."""
    out = IngestOutcome(events=len(raw_events))
    events: list[BusEvent] = []
    for raw in raw_events:
        try:
            events.append(BusEvent.model_validate(raw))
        except ValidationError as exc:
            out.reject(Rejection.MALFORMED)
            log.warning("bus event refused: %s", _problems(exc))
    heartbeats = [e for e in events if e.event_type == EVENT_TYPE]
    out.ignored = len(events) - len(heartbeats)
    records = deps.directory.lookup(e.source for e in heartbeats)

    verified: dict[str, list[_Verified]] = {}
    for event in heartbeats:
        record = records.get(event.source)
        try:
            hb = verify(event.source, event.payload, record.public_key if record else None)
        except HeartbeatRejected as exc:
            out.reject(exc.reason, event.id)
            continue
        assert record is not None  # verify refuses an agent with no key on record
        verified.setdefault(event.source, []).append(_Verified(event.id, hb, record))

    if verified:
        _apply(deps, verified, out)
    _count(deps.redis, out, deps.rejected_seen_s)
    return out


def _apply(deps: IngestDeps, verified: dict[str, list[_Verified]], out: IngestOutcome) -> None:
    r, now = deps.redis, deps.clock.now().timestamp()
    agents = list(verified)
    pipe = r.pipeline(transaction=False)
    for agent_id in agents:
        pipe.hmget(order_key(agent_id), "e", "s")
        pipe.hmget(snapshot_key(agent_id), "balance", "burn_rate_per_hour")
        pipe.get(rule_state_key(agent_id))
    answers = pipe.execute()

    changes: list[Change] = []
    rollups: list[dict[str, Any]] = []
    commits: list[tuple[str, int, int, Snapshot, dict[str, Any], int, dict[int, int]]] = []
    for i, agent_id in enumerate(agents):
        (last_e, last_s), (balance, burn), raw_state = answers[3 * i : 3 * i + 3]
        applied_e = int(last_e or 0)
        applied_s = int(last_s) if last_s is not None else -1
        state: dict[str, Any] = orjson.loads(raw_state) if raw_state else {}
        newest: Snapshot | None = None
        taken = 0
        calls: dict[int, int] = {}  # hour -> tool calls the applied heartbeats report
        for item in sorted(verified[agent_id], key=lambda v: v.event_id):
            hb = item.heartbeat
            if item.event_id <= applied_e:
                out.duplicate += 1
                continue
            if hb.seq <= applied_s:
                out.reject(Rejection.REPLAYED, item.event_id)
                continue
            applied_e, applied_s = item.event_id, hb.seq
            snap = heartbeat_snapshot(hb, item.record, now, deps.policy, balance, burn)
            agent_changes, row = judge_snapshot(deps.agent_rules, state, snap, now)
            changes.extend(agent_changes)
            if row is not None:
                rollups.append(row)
            newest, taken = snap, taken + 1
            if hb.metrics.tool_calls:
                hour = volume.hour_of(min(hb.sent_at, now))
                calls[hour] = calls.get(hour, 0) + hb.metrics.tool_calls
        if newest is not None:
            commits.append((agent_id, applied_e, applied_s, newest, state, taken, calls))

    # Alerts and rollups first: both idempotent, so a batch redone after a crash
    # past this point records nothing twice; then the ordered snapshot writes.
    apply_judgements(deps.sessions, changes, rollups, deps.handoff, now)
    out.changes = len(changes)
    commit = r.register_script(_COMMIT)
    pipe = r.pipeline(transaction=False)
    for agent_id, event_id, seq, snap, state, _, calls in commits:
        values = snap.to_redis()
        owned = {k: values[k] for k in MEASUREMENT_FIELDS if k in values}
        cleared = [k for k in MEASUREMENT_FIELDS if k not in owned]
        record = verified[agent_id][0].record
        views = [record.fleet]
        if record.segment:
            views.append(volume.segment_view(record.fleet, record.segment))
        counters = [volume.volume_key(view, hour) for hour in calls for view in views]
        amounts = [n for n in calls.values() for _ in views]
        argv: list[Any] = [event_id, seq, deps.snapshot_ttl_s, orjson.dumps(state)]
        argv += [deps.state_ttl_s, volume.KEEP_S, *amounts, len(owned)]
        for name, value in owned.items():
            argv += [name, value]
        argv += cleared
        commit(
            keys=[order_key(agent_id), snapshot_key(agent_id), rule_state_key(agent_id)] + counters,
            args=argv,
            client=pipe,
        )
    for (*_, taken, _), applied in zip(commits, pipe.execute(), strict=True):
        if applied == 1:
            out.accepted += taken
        elif applied == 2:
            out.duplicate += taken
        else:
            out.superseded += taken


def heartbeat_snapshot(
    hb: Heartbeat,
    record: AgentRecord,
    now: float,
    policy: Policy,
    balance: str | None = None,
    burn: str | None = None,
) -> Snapshot:
    """The agent's snapshot from its heartbeat: its measurements, health class and SLA
    compliance; the money fields (the wallet poll's) are only read, for the rules."""
    m = hb.metrics
    snap = Snapshot(
        agent_id=hb.agent_id,
        polled_at=now,
        health=classify(policy.health, m.error_rate, m.latency_p99_ms),
        latency_p50=m.latency_p50_ms,
        latency_p99=m.latency_p99_ms,
        error_rate=m.error_rate,
        tool_call_volume=m.tool_calls,
        task_completion_rate=m.task_completion_rate,
        balance=_decimal(balance),
        burn_rate_per_hour=_decimal(burn),
        fleet=record.fleet,
        # Silence is judged from it: a clock ahead of ours must not buy an agent time.
        heartbeat_at=min(hb.sent_at, now),
    )
    return with_sla(snap, record.terms)


def _decimal(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        return None


def _count(r: redis.Redis, out: IngestOutcome, seen_s: int) -> None:
    rejected = dict(out.rejected)
    if out.rejected_events:
        seen = r.pipeline(transaction=False)
        for event_id, _ in out.rejected_events:
            seen.set(rejected_seen_key(event_id), 1, nx=True, ex=seen_s)
        for (_, reason), first in zip(out.rejected_events, seen.execute(), strict=True):
            if not first:  # counted when this event was first delivered
                rejected[reason] -= 1
    pipe = r.pipeline(transaction=False)
    for name in ("accepted", "duplicate", "superseded", "ignored"):
        value = getattr(out, name)
        if value:
            pipe.hincrby(COUNTS_KEY, name, value)
    for reason, n in rejected.items():
        if n:
            pipe.hincrby(COUNTS_KEY, REJECTED_PREFIX + reason, n)
    if pipe:
        pipe.execute()


def ingest_counts(r: redis.Redis) -> dict[str, Any]:
    """The counters since the start: accepted, duplicate, superseded, ignored and
    rejected per reason."""
    raw = read_hash(r, COUNTS_KEY)
    out: dict[str, Any] = {
        name: int(raw.get(name, 0)) for name in ("accepted", "duplicate", "superseded", "ignored")
    }
    out["rejected"] = {
        reason.value: int(raw.get(REJECTED_PREFIX + reason.value, 0)) for reason in Rejection
    }
    return out


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in exc.errors()
    )


__all__ = [
    "COUNTS_KEY",
    "AgentDirectory",
    "AgentRecord",
    "BusEvent",
    "IngestDeps",
    "IngestOutcome",
    "heartbeat_snapshot",
    "ingest_counts",
    "ingest_heartbeats",
]
