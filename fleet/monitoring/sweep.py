"""The monitoring sweep: plan, poll in batches, finish with the fleet view.

::

    beat ──▶ start_sweep()     one per tick window (dedup key), never two at once (lock),
                               agents from the database, split into batches
          ──▶ run_batch() × ⌈agents / batch_size⌉, one queue message each, expiring
                               at the sweep's deadline (before the next tick)
                 poll balance, budget, p99 and error rate of every agent (poller.SweepPoller)
                 snapshot + health class per agent, its SLA terms judged on it
                 (fleet.sla.compliance), the agent's alert rules, hourly rollup
                 one Redis pipeline: snapshots, rule state, the batch's partial aggregate,
                 the failed agents, "batch done" (counted once, even if redelivered)
          ──▶ finish_sweep()   by whichever batch completes the sweep: merge the
                               partials into the fleet view, store it, fleet rules

Every agent is its own unit: its failure (after the gateway client's retry
ceiling) is its own UNKNOWN snapshot with the error, listed in the sweep's
``failed`` record; no agent's failure fails its batch. A batch failing as a
whole (Redis down, a worker killed) is redelivered and re-done; its writes are
overwrites, and its count toward the sweep is taken once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
import redis
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy
from config.settings import MetricsSettings
from fleet.clock import Clock, utc_from_timestamp
from fleet.hotstate import KEY_PREFIX, read_fields, read_hash, texts, write_hash
from fleet.monitoring import alerts as alerts_mod
from fleet.monitoring.aggregate import ALL_FLEETS, FleetHealth, Partial, merge_partials
from fleet.monitoring.health import classify
from fleet.monitoring.models import AgentHourly, FleetSweep
from fleet.monitoring.poller import Reading
from fleet.monitoring.rules import (
    AgentRules,
    AgentSample,
    Change,
    FleetRules,
    evaluate_agent,
    evaluate_fleet,
)
from fleet.monitoring.snapshot import Health, Snapshot, queue_snapshots
from fleet.sla.compliance import local_breaches, margin_pct
from fleet.sla.contracts import active_contracts, contract_for
from fleet.storage.db import write_connection, write_session
from fleet.storage.records import Agent

log = logging.getLogger(__name__)

CURRENT_KEY = f"{KEY_PREFIX}sweep:current"  # the running sweep (the no-overlap lock)
RECENT_KEY = f"{KEY_PREFIX}sweeps"  # ids of the latest sweeps, newest first
STATS_KEY = f"{KEY_PREFIX}sweep:stats"  # counters: started, skipped_overlap, skipped_duplicate
HEALTH_KEY = f"{KEY_PREFIX}health"  # fleet -> FleetHealth JSON, from the last finished sweep
HEALTH_META_KEY = f"{KEY_PREFIX}health:meta"  # sweep_id, finished_at, wall_s of that sweep
RECENT_KEPT = 100
HOUR = 3600


def tick_key(tick: str) -> str:
    return f"{KEY_PREFIX}sweep:tick:{tick}"


def sweep_key(sweep_id: str) -> str:
    return f"{KEY_PREFIX}sweep:{sweep_id}"


def agent_state_key(agent_id: str) -> str:
    return f"{KEY_PREFIX}monitor:agent:{agent_id}"


def fleet_state_key(fleet: str) -> str:
    return f"{KEY_PREFIX}monitor:fleet:{fleet}"


@dataclass
class MonitorDeps:
    redis: redis.Redis
    sessions: sessionmaker[Session]
    policy: Policy
    metrics: MetricsSettings
    interval_s: float
    clock: Clock
    handoff: alerts_mod.Handoff
    agent_rules: AgentRules = field(init=False)
    fleet_rules: FleetRules = field(init=False)

    def __post_init__(self) -> None:
        self.agent_rules = AgentRules.from_policy(self.policy.alerts)
        self.fleet_rules = FleetRules.from_policy(self.policy.alerts)

    def now(self) -> float:
        return self.clock.now().timestamp()


@dataclass(frozen=True)
class SweepPlan:
    sweep_id: str
    started_at: float
    deadline: float  # batch messages expire then: before the next tick
    batches: list[dict[str, list[str]]]  # each: {fleet: [agent ids]}

    @property
    def agents(self) -> int:
        return sum(len(ids) for b in self.batches for ids in b.values())


# --- start ---------------------------------------------------------------------------------


def start_sweep(deps: MonitorDeps, tick: str | None = None) -> SweepPlan | None:
    """Plan a sweep, or None when this tick was already taken or the last sweep still runs.

    ``tick`` names the tick explicitly (a manual or benchmark run). Without it
    the tick is the beat window: one sweep per 0.9 interval, so a second beat
    (or a redelivered message) sending the same tick does nothing.
    """
    r, now, interval = deps.redis, deps.now(), deps.interval_s
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
        batches = plan_batches(agents, deps.metrics.batch_size)
    except BaseException:
        _release(r, sweep_id)
        raise
    plan = SweepPlan(sweep_id, now, deadline, batches)
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


def active_agents(
    sessions: sessionmaker[Session], statuses: Sequence[str]
) -> list[tuple[str, str]]:
    """(fleet, agent_id) of every agent the sweep polls, grouped by fleet."""
    query = (
        select(Agent.fleet, Agent.agent_id)
        .where(Agent.status.in_(list(statuses)))
        .order_by(Agent.fleet, Agent.agent_id)
    )
    with sessions() as session:
        return [(fleet, agent_id) for fleet, agent_id in session.execute(query)]


def plan_batches(agents: Sequence[tuple[str, str]], batch_size: int) -> list[dict[str, list[str]]]:
    batches: list[dict[str, list[str]]] = []
    for start in range(0, len(agents), batch_size):
        batch: dict[str, list[str]] = {}
        for fleet, agent_id in agents[start : start + batch_size]:
            batch.setdefault(fleet, []).append(agent_id)
        batches.append(batch)
    return batches


# --- one batch -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchOutcome:
    sweep_id: str
    batch: int
    agents: int
    unknown: int
    changes: int
    skipped: str | None = None  # why nothing was done (finished sweep, batch already done)
    finished: bool = False  # this batch completed the sweep
    poll_s: float = 0.0  # waiting for the gateway
    total_s: float = 0.0


def to_snapshot(
    reading: Reading,
    fleet: str | None,
    now: float,
    sweep_id: str | None,
    policy: Policy,
    terms: Mapping[str, Any] | None = None,
) -> Snapshot:
    """Health from the agent's latest self-reported p99 and error rate; money from its
    wallet and budget. The burn rate is the budget's rolling 24 h spend (gateway fees)
    per hour: the gateway reports no burn rate of its own. SLA compliance is set when
    the poll measured at least one of the agent's SLA ``terms``."""
    p99_point, err_point = Reading.latest(reading.p99), Reading.latest(reading.error_rate)
    p99 = float(p99_point.value) if p99_point is not None else None
    err = float(err_point.value) if err_point is not None else None
    health = Health.UNKNOWN if reading.failed else classify(policy.health, err, p99)
    budget = reading.budget
    snap = Snapshot(
        agent_id=reading.agent_id,
        polled_at=now,
        health=health,
        latency_p99=p99,
        error_rate=err,
        balance=reading.balance.balance if reading.balance is not None else None,
        burn_rate_per_hour=(budget.daily_spend / 24).quantize(Decimal("0.0001"))
        if budget is not None
        else None,
        error="; ".join(reading.errors) if reading.errors else None,
        fleet=fleet,
        sweep_id=sweep_id,
    )
    if not terms or reading.failed:
        return snap
    broken, margin = local_breaches(terms, snap), margin_pct(terms, snap)
    if not broken and margin is None:
        return snap
    return replace(snap, sla_compliant=not broken, sla_margin_pct=margin, breached_terms=broken)


def sla_terms(
    sessions: sessionmaker[Session], policy: Policy, agent_ids: Sequence[str]
) -> dict[str, Mapping[str, Any]]:
    """Each agent's SLA terms: its recorded contract, else its template's."""
    with sessions() as s:
        rows = s.execute(
            select(Agent.agent_id, Agent.sla_template).where(Agent.agent_id.in_(agent_ids))
        )
        templates = {agent_id: template for agent_id, template in rows}
        contracts = active_contracts(s, agent_ids)
    return {
        agent_id: contract_for(policy, template, contracts.get(agent_id)).terms
        for agent_id, template in templates.items()
    }


def run_batch(
    deps: MonitorDeps,
    poll: Callable[[list[str]], list[Reading]],
    sweep_id: str,
    batch: int,
    agents: dict[str, list[str]],
) -> BatchOutcome:
    began = time.perf_counter()
    r, key = deps.redis, sweep_key(sweep_id)
    status, batches = read_fields(r, key, "status", "batches")
    ids = [agent_id for fleet_ids in agents.values() for agent_id in fleet_ids]
    if status != "running":
        return BatchOutcome(sweep_id, batch, len(ids), 0, 0, skipped=f"sweep is {status or 'gone'}")
    if r.hexists(key + ":done", str(batch)):
        return BatchOutcome(sweep_id, batch, len(ids), 0, 0, skipped="batch already done")
    fleet_of = {agent_id: fleet for fleet, fleet_ids in agents.items() for agent_id in fleet_ids}
    states = r.mget([agent_state_key(a) for a in ids])

    polled = time.perf_counter()
    readings = poll(ids)
    poll_s = time.perf_counter() - polled
    terms = sla_terms(deps.sessions, deps.policy, ids)

    now = deps.now()
    policy, rules = deps.policy, deps.agent_rules
    snapshots: list[Snapshot] = []
    partials: dict[str, Partial] = {}
    changes: list[Change] = []
    rollups: list[dict[str, Any]] = []
    new_states: list[tuple[str, bytes]] = []
    failed: dict[str, str] = {}
    for reading, raw in zip(readings, states, strict=True):
        agent_id = reading.agent_id
        fleet = fleet_of[agent_id]
        snap = to_snapshot(reading, fleet, now, sweep_id, policy, terms.get(agent_id))
        snapshots.append(snap)
        partial = partials.get(fleet)
        if partial is None:
            partial = partials[fleet] = Partial()
        partial.add(snap)
        if snap.error:
            failed[agent_id] = snap.error
        state: dict[str, Any] = orjson.loads(raw) if raw else {}
        changes.extend(
            evaluate_agent(
                rules,
                state,
                AgentSample(
                    agent_id,
                    now,
                    fleet,
                    snap.latency_p99,
                    snap.error_rate,
                    snap.balance,
                    snap.burn_rate_per_hour,
                    snap.sla_compliant,
                ),
            )
        )
        row = fold_hour(state, snap, now)
        if row is not None:
            rollups.append(row)
        new_states.append((agent_state_key(agent_id), orjson.dumps(state)))

    # Alerts first: recorded idempotently, so a batch redelivered after this
    # point re-sends nothing; then the rollups; then every Redis write at once.
    if changes:
        alerts_mod.apply_changes(deps.sessions, changes, deps.handoff, now)
    if rollups:
        insert_rollups(deps.sessions, rollups)
    m = deps.metrics
    pipe = r.pipeline(transaction=False)
    queue_snapshots(pipe, snapshots, m.snapshot_ttl_s or None)
    for state_key, value in new_states:
        pipe.set(state_key, value, ex=m.state_ttl_s)
    pipe.hset(
        key + ":partials", str(batch), orjson.dumps({f: p.to_json() for f, p in partials.items()})
    )
    pipe.expire(key + ":partials", m.sweep_record_ttl_s)
    if failed:
        write_hash(pipe, key + ":failed", failed)
        pipe.expire(key + ":failed", m.sweep_record_ttl_s)
    # "Done" is counted once per batch number, whatever the redeliveries.
    pipe.hsetnx(key + ":done", str(batch), f"{len(ids)}:{len(failed)}")
    pipe.expire(key + ":done", m.sweep_record_ttl_s)
    pipe.hlen(key + ":done")
    done = pipe.execute()[-1]
    finished = False
    if int(done) >= int(batches or 0):
        # Two batches may both see the count complete: finish_sweep runs once.
        finished = finish_sweep(deps, sweep_id) is not None
    return BatchOutcome(
        sweep_id,
        batch,
        len(ids),
        len(failed),
        len(changes),
        finished=finished,
        poll_s=poll_s,
        total_s=time.perf_counter() - began,
    )


def fold_hour(state: dict[str, Any], snap: Snapshot, now: float) -> dict[str, Any] | None:
    """Fold a sample into the agent's current hour (state["h"]); return the previous
    hour's row when the hour turns."""
    hour = int(now // HOUR) * HOUR
    acc = state.get("h")
    row = None
    if acc is not None and acc["t"] != hour:
        row = hour_row(snap.agent_id, snap.fleet, acc)
        acc = None
    if acc is None:
        acc = state["h"] = {
            "t": hour,
            "n": 0,
            "u": 0,
            "c": 0,
            "d": 0,
            "ps": 0.0,
            "pn": 0,
            "pm": None,
            "es": 0.0,
            "en": 0,
            "bm": None,
            "bs": "0",
            "bn": 0,
            "so": 0,
            "sn": 0,
        }
    acc["n"] += 1
    if snap.health is Health.UNKNOWN:
        acc["u"] += 1
    elif snap.health is Health.CRITICAL:
        acc["c"] += 1
    elif snap.health is Health.DEGRADED:
        acc["d"] += 1
    if snap.latency_p99 is not None:
        acc["ps"] += snap.latency_p99
        acc["pn"] += 1
        acc["pm"] = snap.latency_p99 if acc["pm"] is None else max(acc["pm"], snap.latency_p99)
    if snap.error_rate is not None:
        acc["es"] += snap.error_rate
        acc["en"] += 1
    if snap.balance is not None:
        acc["bm"] = str(
            snap.balance if acc["bm"] is None else min(Decimal(acc["bm"]), snap.balance)
        )
    if snap.burn_rate_per_hour is not None:
        acc["bs"] = str(Decimal(acc["bs"]) + snap.burn_rate_per_hour)
        acc["bn"] += 1
    if snap.sla_compliant is not None:
        acc["sn"] += 1
        acc["so"] += snap.sla_compliant
    return row


def hour_row(agent_id: str, fleet: str | None, acc: dict[str, Any]) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "hour": utc_from_timestamp(acc["t"]),
        "fleet": fleet,
        "samples": acc["n"],
        "unknown": acc["u"],
        "critical": acc["c"],
        "degraded": acc["d"],
        "latency_p99_avg": acc["ps"] / acc["pn"] if acc["pn"] else None,
        "latency_p99_max": acc["pm"],
        "error_rate_avg": acc["es"] / acc["en"] if acc["en"] else None,
        "balance_min": acc["bm"],
        "burn_rate_avg": str((Decimal(acc["bs"]) / acc["bn"]).quantize(Decimal("0.01")))
        if acc["bn"]
        else None,
        "sla_compliant": acc["so"],
        "sla_checked": acc["sn"],
    }


def insert_rollups(sessions: sessionmaker[Session], rows: list[dict[str, Any]]) -> None:
    """Insert finished hours; a row already there (a redelivered batch) is left as it is."""
    with write_connection(sessions) as conn:
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            conn.execute(pg_insert(AgentHourly).on_conflict_do_nothing(), rows)
        elif conn.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            conn.execute(sqlite_insert(AgentHourly).on_conflict_do_nothing(), rows)
        else:  # pragma: no cover - the two databases we support
            existing = set(conn.execute(select(AgentHourly.agent_id, AgentHourly.hour)).all())
            conn.execute(
                insert(AgentHourly),
                [r for r in rows if (r["agent_id"], r["hour"]) not in existing],
            )


# --- finish --------------------------------------------------------------------------------


def finish_sweep(deps: MonitorDeps, sweep_id: str) -> dict[str, FleetHealth] | None:
    """Merge the batches' partials into the fleet view, store it, apply the fleet rules
    (once per sweep)."""
    r, key = deps.redis, sweep_key(sweep_id)
    if not r.hsetnx(key, "finishing", "1"):
        return None
    started_at = float(r.hget(key, "started_at") or deps.now())
    parts = [orjson.loads(v) for v in r.hvals(key + ":partials")]
    fleets = merge_partials(parts)
    now = deps.now()
    pipe = r.pipeline(transaction=True)
    pipe.delete(HEALTH_KEY)
    pipe.hset(HEALTH_KEY, mapping={f: orjson.dumps(h.as_dict()) for f, h in fleets.items()})
    pipe.hset(
        HEALTH_META_KEY,
        mapping={"sweep_id": sweep_id, "started_at": repr(started_at), "finished_at": repr(now)},
    )
    pipe.execute()
    with write_session(deps.sessions) as session:
        session.add_all(
            FleetSweep(
                sweep_id=sweep_id,
                fleet=h.fleet,
                started_at=utc_from_timestamp(started_at),
                finished_at=utc_from_timestamp(now),
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
            for h in fleets.values()
        )

    names = [f for f in fleets if f != ALL_FLEETS]
    if names:
        raw_states = r.mget([fleet_state_key(f) for f in names])
        changes: list[Change] = []
        pipe = r.pipeline(transaction=False)
        for fleet, raw in zip(names, raw_states, strict=True):
            state: dict[str, Any] = orjson.loads(raw) if raw else {}
            changes.extend(
                evaluate_fleet(deps.fleet_rules, state, fleet, fleets[fleet].as_dict(), now)
            )
            pipe.set(fleet_state_key(fleet), orjson.dumps(state), ex=deps.metrics.state_ttl_s)
        if changes:
            alerts_mod.apply_changes(deps.sessions, changes, deps.handoff, now)
        pipe.execute()

    finished = deps.now()
    r.hset(
        key,
        mapping={
            "status": "finished",
            "finished_at": repr(finished),
            "wall_s": f"{finished - started_at:.3f}",
        },
    )
    r.hset(HEALTH_META_KEY, "wall_s", f"{finished - started_at:.3f}")
    _release(r, sweep_id)
    return fleets


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


# --- reading it back -----------------------------------------------------------------------


def sweep_status(r: redis.Redis, sweep_id: str) -> dict[str, Any] | None:
    raw = read_hash(r, sweep_key(sweep_id))
    if not raw:
        return None
    out: dict[str, Any] = dict(raw)
    for name in ("agents", "batches"):
        out[name] = int(out.get(name) or 0)
    done = [v.split(":") for v in texts(r.hvals(sweep_key(sweep_id) + ":done"))]
    out["batches_done"] = len(done)
    out["agents_done"] = sum(int(a) for a, _ in done)
    out["unknown"] = sum(int(u) for _, u in done)
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
    """The last finished sweep's fleet view ({fleet: health dict}, with "*" for all) and
    its sweep's meta."""
    raw = read_hash(r, HEALTH_KEY)
    return {fleet: orjson.loads(value) for fleet, value in raw.items()}, read_hash(
        r, HEALTH_META_KEY
    )


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
    "SweepPlan",
    "enforce_retention",
    "finish_sweep",
    "fleet_health",
    "recent_sweeps",
    "run_batch",
    "start_sweep",
    "sweep_status",
]
