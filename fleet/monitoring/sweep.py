"""The wallet poll: what only a poll can tell (balance, budget), on a plan inside the
gateway's rate windows.

::

    beat ──▶ start_sweep()     one per tick window (dedup key), never two at once (lock);
                               the plan (fleet.monitoring.plan) from the agents in the
                               database by key tier, the policy's period and headroom:
                               refused with its numbers when it cannot fit, else this
                               tick's slot of the fleet, split into batches, each agent
                               marked for the admin key or its own
          ──▶ run_batch() × ⌈slot / batch_size⌉, one queue message each, expiring
                               at the sweep's deadline (before the next tick)
                 two reads per agent (poller.SweepPoller): balance, budget status
                 one Redis transaction: the money fields of each snapshot
                 (snapshot.queue_fields: balance, burn_rate_per_hour, wallet_read_at,
                 wallet_error; the heartbeat ingest owns the rest), the failed agents,
                 the calls and their X-Charged per fleet (the monitoring overhead),
                 429s (plan defects), "batch done" (counted once, even if redelivered)
          ──▶ finish_sweep()   by whichever batch completes the sweep

Every agent is its own unit: its failure is its own ``wallet_error``, listed in
the sweep's ``failed`` record; no agent's failure fails its batch. A batch
failing as a whole (Redis down, a worker killed) is redelivered and re-done; its
writes are overwrites, and its counts are taken once.

Health, alert rules, SLA samples, rollups and the fleet view come from the
agents' heartbeats, not from here; the readers of the fleet view stay in this
module (:func:`fleet_health`) so the API, `fleet status` and the console keep
working.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any, NamedTuple

import orjson
import redis
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy
from config.settings import MetricsSettings
from fleet.clock import Clock, utc_from_timestamp
from fleet.hotstate import KEY_PREFIX, read_fields, read_hash, texts, write_hash
from fleet.monitoring import alerts as alerts_mod
from fleet.monitoring.models import AgentHourly, FleetSweep
from fleet.monitoring.plan import (
    NO_KEY,
    PlanRefused,
    WalletPlan,
    make_plan,
    plan_input,
    routes,
    slot_of,
)
from fleet.monitoring.poller import READS_PER_AGENT, WalletReading
from fleet.monitoring.rules import AgentRules, FleetRules
from fleet.monitoring.snapshot import queue_fields, snapshot_key
from fleet.storage.db import write_session
from fleet.storage.records import Agent

log = logging.getLogger(__name__)

CURRENT_KEY = f"{KEY_PREFIX}sweep:current"  # the running sweep (the no-overlap lock)
RECENT_KEY = f"{KEY_PREFIX}sweeps"  # ids of the latest sweeps, newest first
# counters: started, skipped_overlap, skipped_duplicate, refused, rate_limited, paced
STATS_KEY = f"{KEY_PREFIX}sweep:stats"
PLAN_KEY = f"{KEY_PREFIX}sweep:plan"  # the last plan computed (JSON), or its refusal
HEALTH_KEY = f"{KEY_PREFIX}health"  # fleet -> FleetHealth JSON (the fleet view)
SEGMENTS_KEY = f"{KEY_PREFIX}health:segments"  # "fleet/segment" -> FleetHealth JSON
HEALTH_META_KEY = f"{KEY_PREFIX}health:meta"  # sweep_id, finished_at, wall_s of that view
RECENT_KEPT = 100
MINUTE = 60
OVERHEAD_KEPT_S = 2 * 3600


def tick_key(tick: str) -> str:
    return f"{KEY_PREFIX}sweep:tick:{tick}"


def sweep_key(sweep_id: str) -> str:
    return f"{KEY_PREFIX}sweep:{sweep_id}"


def agent_state_key(agent_id: str) -> str:
    return f"{KEY_PREFIX}monitor:agent:{agent_id}"


def fleet_state_key(fleet: str) -> str:
    return f"{KEY_PREFIX}monitor:fleet:{fleet}"


def overhead_key(minute: int) -> str:
    """The sweep's calls and X-Charged per fleet in one minute (Unix time // 60)."""
    return f"{KEY_PREFIX}monitoring:overhead:{minute}"


@dataclass
class MonitorDeps:
    redis: redis.Redis
    sessions: sessionmaker[Session]
    policy: Policy
    metrics: MetricsSettings
    interval_s: float
    clock: Clock
    handoff: alerts_mod.Handoff
    # The plan may put wallet reads on the admin key only when there is one.
    admin_key_configured: bool = False
    # The kill switch (fleet.control.LoopState): a reason while the control loop is paused.
    paused: Callable[[], str | None] = lambda: None
    agent_rules: AgentRules = field(init=False)
    fleet_rules: FleetRules = field(init=False)

    def __post_init__(self) -> None:
        self.agent_rules = AgentRules.from_policy(self.policy.alerts)
        self.fleet_rules = FleetRules.from_policy(self.policy.alerts)

    def now(self) -> float:
        return self.clock.now().timestamp()


class PolledAgent(NamedTuple):
    fleet: str
    agent_id: str
    tier: str  # the tier of the key we hold for it, NO_KEY when we hold none


# One batch row, as it travels in the queue message: agent id, fleet, read through the admin key.
Row = tuple[str, str, bool]


@dataclass(frozen=True)
class SweepPlan:
    sweep_id: str
    started_at: float
    deadline: float  # batch messages expire then: before the next tick
    batches: list[list[Row]]
    wallet: WalletPlan
    slot: int

    @property
    def agents(self) -> int:
        return sum(len(b) for b in self.batches)


# --- start ---------------------------------------------------------------------------------


def start_sweep(
    deps: MonitorDeps, tick: str | None = None, slot: int | None = None
) -> SweepPlan | None:
    """Plan a sweep, or None when this tick was already taken, the last sweep still runs,
    or the plan does not fit (then recorded under :data:`PLAN_KEY` with its numbers).

    ``tick`` names the tick explicitly (a manual or benchmark run). Without it
    the tick is the beat window: one sweep per 0.9 interval, so a second beat
    (or a redelivered message) sending the same tick does nothing. ``slot``
    picks the slice of the fleet (default: the tick's place in the period).
    """
    r, now, interval = deps.redis, deps.now(), deps.interval_s
    paused = deps.paused()
    if paused is not None:
        r.hincrby(STATS_KEY, "skipped_paused", 1)
        log.info("sweep skipped: %s", paused)
        return None
    window_ms = max(1, int(interval * 0.9 * 1000))
    taken = (
        r.set(tick_key("beat"), "1", nx=True, px=window_ms)
        if tick is None
        else r.set(tick_key(tick), "1", nx=True, ex=max(1, int(2 * interval)))
    )
    if not taken:
        r.hincrby(STATS_KEY, "skipped_duplicate", 1)
        log.info("sweep tick %s already taken; nothing to do", tick or "(beat window)")
        return None
    stale_sweeps_abandoned(r, now, limit=5)
    sweep_id = f"{int(now)}-{uuid.uuid4().hex[:8]}"
    deadline = now + interval * 0.9
    if not r.set(CURRENT_KEY, sweep_id, nx=True, px=window_ms):
        r.hincrby(STATS_KEY, "skipped_overlap", 1)
        log.warning("sweep %s still running; skipping this tick", r.get(CURRENT_KEY))
        return None
    try:
        agents = active_agents(deps.sessions, deps.metrics.statuses)
        wallet = current_plan(deps, agents)
        if wallet is None:
            _release(r, sweep_id)
            return None
        slot = int(now // interval) % wallet.slots if slot is None else slot % wallet.slots
        on_admin = routes(wallet, ((a.agent_id, a.tier) for a in agents))
        chosen = [a for a in agents if slot_of(a.agent_id, wallet.slots) == slot]
        batches = plan_batches(chosen, on_admin, deps.metrics.batch_size)
    except BaseException:
        _release(r, sweep_id)
        raise
    plan = SweepPlan(sweep_id, now, deadline, batches, wallet, slot)
    pipe = r.pipeline(transaction=False)
    key = sweep_key(sweep_id)
    pipe.hset(
        key,
        mapping={
            "sweep_id": sweep_id,
            "tick": tick or "",
            "status": "running",
            "started_at": repr(now),
            "deadline": repr(deadline),
            "agents": plan.agents,
            "batches": len(batches),
            "slot": slot,
            "slots": wallet.slots,
        },
    )
    pipe.expire(key, deps.metrics.sweep_record_ttl_s)
    pipe.lpush(RECENT_KEY, sweep_id)
    pipe.ltrim(RECENT_KEY, 0, RECENT_KEPT - 1)
    pipe.hincrby(STATS_KEY, "started", 1)
    pipe.execute()
    if not batches:
        finish_sweep(deps, sweep_id)
    return plan


def compute_plan(
    agents: Sequence[PolledAgent], policy: Policy, *, tick_s: float, admin: bool
) -> WalletPlan:
    """The wallet plan for ``agents``, or :class:`PlanRefused` with its numbers."""
    return make_plan(
        plan_input(
            policy.monitoring,
            Counter(a.tier for a in agents),
            tick_s=tick_s,
            reads_per_agent=READS_PER_AGENT,
            admin=admin,
        )
    )


def current_plan(deps: MonitorDeps, agents: Sequence[PolledAgent]) -> WalletPlan | None:
    """The wallet plan for ``agents`` now, recorded for `fleet status` and /metrics; None
    (recorded, counted and logged with its numbers) when it cannot fit."""
    r, now = deps.redis, deps.now()
    try:
        wallet = compute_plan(
            agents, deps.policy, tick_s=deps.interval_s, admin=deps.admin_key_configured
        )
    except PlanRefused as refused:
        r.set(PLAN_KEY, orjson.dumps({**refused.as_dict(), "at": now}))
        r.hincrby(STATS_KEY, "refused", 1)
        log.error("%s", refused.message)
        return None
    r.set(PLAN_KEY, orjson.dumps({**wallet.as_dict(), "at": now}))
    return wallet


def last_plan(r: redis.Redis) -> dict[str, Any] | None:
    """The plan the last sweep computed ({"fits": True, ...}) or its refusal
    ({"fits": False, "refused": message, ...})."""
    raw = r.get(PLAN_KEY)
    return orjson.loads(raw) if raw else None


def active_agents(sessions: sessionmaker[Session], statuses: Sequence[str]) -> list[PolledAgent]:
    """Every agent the sweep polls, with the tier of the key held for it."""
    tier = Agent.extra[("key", "tier")].as_string()
    query = (
        select(Agent.fleet, Agent.agent_id, tier, Agent.api_key_encrypted.is_not(None))
        .where(Agent.status.in_(list(statuses)))
        .order_by(Agent.fleet, Agent.agent_id)
    )
    with sessions() as session:
        return [
            PolledAgent(fleet, agent_id, (key_tier or "free") if has_key else NO_KEY)
            for fleet, agent_id, key_tier, has_key in session.execute(query)
        ]


def plan_batches(
    agents: Sequence[PolledAgent], on_admin: dict[str, bool], batch_size: int
) -> list[list[Row]]:
    rows = [(a.agent_id, a.fleet, on_admin[a.agent_id]) for a in agents]
    return [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]


def parse_rows(raw: Any) -> list[Row]:
    """A batch message's rows, or ValueError naming the first bad one."""
    if not isinstance(raw, list):
        raise ValueError(f"batch rows must be a list, got {type(raw).__name__}")
    rows: list[Row] = []
    for i, row in enumerate(raw):
        if (
            not isinstance(row, list | tuple)
            or len(row) != 3
            or not isinstance(row[0], str)
            or not row[0]
            or not isinstance(row[1], str)
            or not isinstance(row[2], bool)
        ):
            raise ValueError(f"batch row {i} must be [agent_id, fleet, via_admin], got {row!r}")
        rows.append((row[0], row[1], row[2]))
    return rows


# --- one batch -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchOutcome:
    sweep_id: str
    batch: int
    agents: int
    failed: int
    rate_limited: int = 0  # 429s: the plan overran a window
    skipped: str | None = None  # why nothing was done (finished sweep, batch already done)
    finished: bool = False  # this batch completed the sweep
    poll_s: float = 0.0  # waiting for the gateway
    total_s: float = 0.0


def wallet_fields(reading: WalletReading, now: float) -> dict[str, str]:
    """The money fields of an agent's snapshot from its reading. The burn rate is the
    budget's rolling 24 h spend (gateway fees) per hour: the gateway reports none."""
    out = {"agent_id": reading.agent_id}
    if reading.balance is not None:
        out["balance"] = str(reading.balance.balance)
        out["wallet_read_at"] = repr(now)
    if reading.budget is not None:
        out["burn_rate_per_hour"] = str(
            (reading.budget.daily_spend / 24).quantize(Decimal("0.0001"))
        )
    if reading.errors:
        out["wallet_error"] = "; ".join(reading.errors)
    return out


def run_batch(
    deps: MonitorDeps,
    poll: Callable[[list[tuple[str, bool]]], list[WalletReading]],
    sweep_id: str,
    batch: int,
    rows: Sequence[Row],
) -> BatchOutcome:
    began = time.perf_counter()
    r, key = deps.redis, sweep_key(sweep_id)
    status, batches = read_fields(r, key, "status", "batches")
    if status != "running":
        return BatchOutcome(sweep_id, batch, len(rows), 0, skipped=f"sweep is {status or 'gone'}")
    if r.hexists(key + ":done", str(batch)):
        return BatchOutcome(sweep_id, batch, len(rows), 0, skipped="batch already done")
    fleet_of = {agent_id: fleet for agent_id, fleet, _ in rows}

    polled = time.perf_counter()
    readings = poll([(agent_id, via_admin) for agent_id, _, via_admin in rows])
    poll_s = time.perf_counter() - polled

    now = deps.now()
    m = deps.metrics
    failed: dict[str, str] = {}
    charged: dict[str, Decimal] = {}
    calls: Counter[str] = Counter()
    limited = paced = 0
    # One transaction: the snapshots, the overhead and the defects land with "batch
    # done", so a batch redelivered after it counts nothing twice.
    pipe = r.pipeline(transaction=True)
    for reading in readings:
        fleet = fleet_of[reading.agent_id]
        queue_fields(pipe, reading.agent_id, wallet_fields(reading, now), m.snapshot_ttl_s or None)
        if reading.errors:
            failed[reading.agent_id] = "; ".join(reading.errors)
        else:
            pipe.hdel(snapshot_key(reading.agent_id), "wallet_error")
        charged[fleet] = charged.get(fleet, Decimal(0)) + reading.charged
        calls[fleet] += reading.calls
        limited += reading.rate_limited
        paced += reading.paced
    minute = overhead_key(int(now // MINUTE))
    for fleet, n in calls.items():
        pipe.hincrby(minute, f"{fleet}:calls", n)
        if charged[fleet]:
            pipe.hincrbyfloat(minute, f"{fleet}:charged", float(charged[fleet]))
    pipe.expire(minute, OVERHEAD_KEPT_S)
    if limited or paced:
        for name, n in (("rate_limited", limited), ("paced", paced)):
            if n:
                pipe.hincrby(STATS_KEY, name, n)
                pipe.hincrby(key, name, n)
    if failed:
        write_hash(pipe, key + ":failed", failed)
        pipe.expire(key + ":failed", m.sweep_record_ttl_s)
    # "Done" is counted once per batch number, whatever the redeliveries.
    pipe.hsetnx(key + ":done", str(batch), f"{len(rows)}:{len(failed)}")
    pipe.expire(key + ":done", m.sweep_record_ttl_s)
    pipe.hlen(key + ":done")
    done = pipe.execute()[-1]
    if limited:
        log.warning(
            "sweep %s batch %d: %d calls answered 429: the wallet plan overran a rate window",
            sweep_id,
            batch,
            limited,
        )
    finished = False
    if int(done) >= int(batches or 0):
        # Two batches may both see the count complete: finish_sweep runs once.
        finished = finish_sweep(deps, sweep_id)
    return BatchOutcome(
        sweep_id,
        batch,
        len(rows),
        len(failed),
        rate_limited=limited,
        finished=finished,
        poll_s=poll_s,
        total_s=time.perf_counter() - began,
    )


# --- finish --------------------------------------------------------------------------------


def finish_sweep(deps: MonitorDeps, sweep_id: str) -> bool:
    """Mark the sweep finished and drop its lock (once per sweep); False if already done."""
    r, key = deps.redis, sweep_key(sweep_id)
    if not r.hsetnx(key, "finishing", "1"):
        return False
    started_at = float(r.hget(key, "started_at") or deps.now())
    finished = deps.now()
    r.hset(
        key,
        mapping={
            "status": "finished",
            "finished_at": repr(finished),
            "wall_s": f"{finished - started_at:.3f}",
        },
    )
    _release(r, sweep_id)
    return True


def _release(r: redis.Redis, sweep_id: str) -> None:
    """Drop the no-overlap lock if it is still this sweep's."""
    with r.pipeline() as pipe:
        try:
            pipe.watch(CURRENT_KEY)  # type: ignore[no-untyped-call]
            if pipe.get(CURRENT_KEY) == sweep_id:
                pipe.multi()
                pipe.delete(CURRENT_KEY)
                pipe.execute()
        except redis.WatchError:
            pass  # it changed hands meanwhile: not ours any more


# --- what monitoring costs -----------------------------------------------------------------


@dataclass(frozen=True)
class Overhead:
    fleet: str
    calls: int  # the sweep's requests in the last hour
    charged: Decimal  # their X-Charged: the monitoring overhead in $ per hour

    def as_dict(self) -> dict[str, Any]:
        return {"fleet": self.fleet, "calls_per_hour": self.calls, "per_hour": str(self.charged)}


def monitoring_overhead(r: redis.Redis, now: float) -> dict[str, Overhead]:
    """Per fleet, the sweep's calls and what the gateway charged for them over the last
    hour (sixty minute buckets, the current one included)."""
    last = int(now // MINUTE)
    pipe = r.pipeline(transaction=False)
    for minute in range(last - 59, last + 1):
        pipe.hgetall(overhead_key(minute))
    calls: Counter[str] = Counter()
    charged: dict[str, Decimal] = {}
    for bucket in pipe.execute():
        for name, value in bucket.items():
            fleet, _, what = name.rpartition(":")
            if what == "calls":
                calls[fleet] += int(value)
            elif what == "charged":
                charged[fleet] = charged.get(fleet, Decimal(0)) + Decimal(value)
    return {
        fleet: Overhead(
            fleet, calls[fleet], charged.get(fleet, Decimal(0)).quantize(Decimal("0.01"))
        )
        for fleet in sorted(set(calls) | set(charged))
    }


# --- reading it back -----------------------------------------------------------------------


def sweep_status(r: redis.Redis, sweep_id: str) -> dict[str, Any] | None:
    raw = read_hash(r, sweep_key(sweep_id))
    if not raw:
        return None
    out: dict[str, Any] = dict(raw)
    for name in ("agents", "batches", "slot", "slots", "rate_limited", "paced"):
        out[name] = int(out.get(name) or 0)
    done = [v.split(":") for v in texts(r.hvals(sweep_key(sweep_id) + ":done"))]
    out["batches_done"] = len(done)
    out["agents_done"] = sum(int(a) for a, _ in done)
    out["failed"] = sum(int(u) for _, u in done)
    return out


def sweep_failures(r: redis.Redis, sweep_id: str, limit: int = 100) -> dict[str, str]:
    out: dict[str, str] = {}
    for agent_id, error in r.hscan_iter(sweep_key(sweep_id) + ":failed", count=500):
        out[agent_id] = error
        if len(out) >= limit:
            break
    return out


def recent_sweeps(r: redis.Redis, limit: int = 10) -> list[str]:
    return texts(r.lrange(RECENT_KEY, 0, limit - 1))


def fleet_health(r: redis.Redis) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The fleet view ({fleet: health dict}, with "*" for all) and its meta, as the pass
    over the heartbeat snapshots last stored it."""
    raw = read_hash(r, HEALTH_KEY)
    return {fleet: orjson.loads(value) for fleet, value in raw.items()}, read_hash(
        r, HEALTH_META_KEY
    )


def segment_health(r: redis.Redis) -> dict[str, dict[str, Any]]:
    """Each segment's view ({"fleet/segment": health dict}) as the last pass stored it."""
    return {name: orjson.loads(value) for name, value in read_hash(r, SEGMENTS_KEY).items()}


def stale_sweeps_abandoned(r: redis.Redis, now: float, limit: int = RECENT_KEPT) -> list[str]:
    """Mark sweeps past their deadline that never finished (their batches expired) as incomplete."""
    out = []
    for sweep_id in recent_sweeps(r, limit):
        status, deadline = read_fields(r, sweep_key(sweep_id), "status", "deadline")
        if status == "running" and deadline and float(deadline) < now:
            r.hset(sweep_key(sweep_id), "status", "incomplete")
            out.append(sweep_id)
    return out


# --- retention -----------------------------------------------------------------------------


def enforce_retention(
    sessions: sessionmaker[Session], policy: Policy, now: float
) -> dict[str, int]:
    """Delete history older than retention.metrics_days (hourly rollups, fleet sweeps,
    resolved alerts)."""
    cutoff = utc_from_timestamp(now) - timedelta(days=policy.retention.metrics_days)
    with write_session(sessions) as session:
        hourly = session.execute(delete(AgentHourly).where(AgentHourly.hour < cutoff)).rowcount  # type: ignore[attr-defined]
        sweeps = session.execute(delete(FleetSweep).where(FleetSweep.started_at < cutoff)).rowcount  # type: ignore[attr-defined]
        resolved = alerts_mod.purge_resolved(session, cutoff)
    return {"hourly": int(hourly or 0), "fleet_sweeps": int(sweeps or 0), "alerts": resolved}


__all__ = [
    "BatchOutcome",
    "MonitorDeps",
    "compute_plan",
    "Overhead",
    "PolledAgent",
    "SweepPlan",
    "enforce_retention",
    "finish_sweep",
    "fleet_health",
    "active_agents",
    "last_plan",
    "monitoring_overhead",
    "parse_rows",
    "recent_sweeps",
    "run_batch",
    "start_sweep",
    "sweep_status",
]
