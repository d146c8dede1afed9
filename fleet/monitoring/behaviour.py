"""Behavioural signals from the task logs agents submit (operations §2).

Ingestion
---------
An agent (or whatever runs it) reports each finished task::

    POST /api/v1/monitoring/task-logs            (bearer token; JSON list, up to 1000 records)
    Celery: metrics.ingest_task_logs  kwargs {"records": [...]}

    {"agent_id": "support-0001-1a2b3c4d", "task_id": "t-123", "finished_at": "2026-01-01T12:00:00Z",
     "tool_calls": 7, "unique_tools": 3, "retries": 1, "escalated": false,
     "decision_latency_ms": 840.0, "counterparties": ["acme-bot"]}

A record is counted once per (agent, task id) whatever the resubmissions.
Counters live in Redis per agent per window (``behaviour.window_s``, an hour
by default) and per day for counterparties, expiring on their own.

Signals
-------
A beat task judges every agent that reported recently, over the current and
the previous window together, once there are ``min_tasks`` tasks:

- tool calls per task above ``tool_calls_per_task_factor`` × its own baseline;
- unique tools per task above ``unique_tools_per_task_factor`` × its baseline;
- retry ratio (retried calls / calls) above ``retry_ratio``;
- escalation rate (escalated tasks / tasks) above ``escalation_rate``;
- decision latency p99 above ``decision_latency_p99_over_p50`` × its p50;
- fewer than ``min_counterparties_per_day`` distinct counterparties over the
  previous day (an agent that worked that day).

Baselines learn from each finished window that raised no signal. A signal is
an alert like any other (``behaviour.<signal>``): one per episode, resolved
when it clears, or when the agent has stopped reporting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import redis
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy import select

from config.policy import AlertPolicy
from fleet.hotstate import KEY_PREFIX, texts
from fleet.monitoring.aggregate import percentile
from fleet.monitoring.alerts import apply_changes
from fleet.monitoring.rules import WARNING, Change, Rule, baseline_ready, learn, track
from fleet.storage.records import Agent

if TYPE_CHECKING:
    from fleet.monitoring.sweep import MonitorDeps

DAY = 86400
AGENT_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
MAX_LATENCIES = 1000


def _json_number(value: Any) -> Any:
    # As JSON Schema reads them: true is not the count 1, nor "3" the number 3 (3.0 is).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a JSON number")
    return value


def _time_text(value: Any) -> Any:
    # A number would be read as a Unix time; the schema promises RFC 3339 text.
    if value is not None and not isinstance(value, str | datetime):
        raise ValueError("expected an RFC 3339 date-time, e.g. 2026-01-01T00:00:00Z")
    return value


class TaskLog(BaseModel):
    """One finished task (default ``finished_at``: when it arrives)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_id: Annotated[str, Field(pattern=AGENT_ID)]
    task_id: Annotated[str, Field(min_length=1, max_length=128)]
    finished_at: Annotated[datetime | None, BeforeValidator(_time_text)] = None
    tool_calls: Annotated[int, Field(ge=0, le=100_000), BeforeValidator(_json_number)]
    unique_tools: Annotated[int, Field(ge=0, le=10_000), BeforeValidator(_json_number)]
    retries: Annotated[int, Field(ge=0, le=100_000), BeforeValidator(_json_number)] = 0
    escalated: Annotated[bool, Field(strict=True)] = False
    decision_latency_ms: Annotated[float, Field(ge=0), BeforeValidator(_json_number)] | None = None
    counterparties: Annotated[
        list[Annotated[str, Field(max_length=128)]], Field(max_length=100)
    ] = []


def _window(agent_id: str, bucket: int) -> str:
    return f"{KEY_PREFIX}tasklog:{agent_id}:{bucket}"


def _day_tasks(agent_id: str, day: int) -> str:
    return f"{KEY_PREFIX}tasklog:{agent_id}:d{day}"


def _counterparties(agent_id: str, day: int) -> str:
    return f"{KEY_PREFIX}tasklog:cp:{agent_id}:{day}"


def _reporting(bucket: int) -> str:
    return f"{KEY_PREFIX}tasklog:agents:{bucket}"


WATCH_KEY = f"{KEY_PREFIX}tasklog:watch"  # agents with a condition being tracked


def _state(agent_id: str) -> str:
    return f"{KEY_PREFIX}tasklog:state:{agent_id}"


def ingest(r: redis.Redis, records: Sequence[TaskLog], window_s: float, now: float) -> int:
    """Count each record into its agent's window and day; returns how many were new."""
    keep = int(window_s * 3)
    seen = r.pipeline(transaction=False)
    for rec in records:
        seen.set(
            f"{KEY_PREFIX}tasklog:seen:{rec.agent_id}:{rec.task_id}",
            "1",
            nx=True,
            ex=max(keep, 2 * DAY),
        )
    fresh = [rec for rec, new in zip(records, seen.execute(), strict=True) if new]
    pipe = r.pipeline(transaction=False)
    for rec in fresh:
        at = rec.finished_at.timestamp() if rec.finished_at else now
        bucket, day = int(at // window_s), int(at // DAY)
        key = _window(rec.agent_id, bucket)
        pipe.hincrby(key, "tasks", 1)
        pipe.hincrby(key, "calls", rec.tool_calls)
        pipe.hincrby(key, "unique", rec.unique_tools)
        if rec.retries:
            pipe.hincrby(key, "retries", rec.retries)
        if rec.escalated:
            pipe.hincrby(key, "escalated", 1)
        pipe.expire(key, keep)
        if rec.decision_latency_ms is not None:
            pipe.rpush(key + ":lat", rec.decision_latency_ms)
            pipe.ltrim(key + ":lat", -MAX_LATENCIES, -1)
            pipe.expire(key + ":lat", keep)
        pipe.incr(_day_tasks(rec.agent_id, day))
        pipe.expire(_day_tasks(rec.agent_id, day), 3 * DAY)
        if rec.counterparties:
            pipe.sadd(_counterparties(rec.agent_id, day), *rec.counterparties)
            pipe.expire(_counterparties(rec.agent_id, day), 3 * DAY)
        pipe.sadd(_reporting(bucket), rec.agent_id)
        pipe.expire(_reporting(bucket), keep)
    pipe.execute()
    return len(fresh)


def behaviour_rules() -> dict[str, Rule]:
    names = {
        "tool_calls_per_task": "tool calls per task above its baseline",
        "unique_tools_per_task": "unique tools per task above its baseline",
        "retry_ratio": "retry ratio too high",
        "escalation_rate": "escalation rate too high",
        "decision_latency": "decision latency p99 far above its p50",
        "counterparty_diversity": "too few counterparties in a day",
    }
    return {n: Rule(f"behaviour.{n}", WARNING, "oncall", 0, summary=s) for n, s in names.items()}


RULES = behaviour_rules()


def _counts(raw: dict[str, str]) -> dict[str, int]:
    return {k: int(v) for k, v in raw.items()}


def check(
    r: redis.Redis, policy: AlertPolicy, now: float, fleet_of: dict[str, str] | None = None
) -> list[Change]:
    """Judge every agent that reported in the last two windows, or has a signal open; returns the
    changes."""
    b = policy.behaviour
    window = b.window_s
    cur, prev = int(now // window), int(now // window) - 1
    yesterday = int(now // DAY) - 1
    agents = sorted(texts(r.sunion([_reporting(cur), _reporting(prev), WATCH_KEY])))
    changes: list[Change] = []
    for start in range(0, len(agents), 500):
        chunk = agents[start : start + 500]
        pipe = r.pipeline(transaction=False)
        for agent_id in chunk:
            pipe.hgetall(_window(agent_id, cur))
            pipe.hgetall(_window(agent_id, prev))
            pipe.lrange(_window(agent_id, cur) + ":lat", 0, -1)
            pipe.lrange(_window(agent_id, prev) + ":lat", 0, -1)
            pipe.get(_day_tasks(agent_id, yesterday))
            pipe.scard(_counterparties(agent_id, yesterday))
            pipe.get(_state(agent_id))
        raw = pipe.execute()
        out = r.pipeline(transaction=False)
        for i, agent_id in enumerate(chunk):
            c, p, lc, lp, day_tasks, day_cps, st = raw[7 * i : 7 * i + 7]
            state: dict[str, Any] = orjson.loads(st) if st else {}
            fleet = (fleet_of or {}).get(agent_id)
            got = judge(
                policy,
                state,
                agent_id,
                _counts(c),
                _counts(p),
                [float(x) for x in (*lp, *lc)],
                int(day_tasks or 0),
                int(day_cps or 0),
                prev,
                now,
                fleet,
            )
            changes.extend(got)
            out.set(_state(agent_id), orjson.dumps(state), ex=int(max(window * 3, 2 * DAY)))
            if state.get("c"):
                out.sadd(WATCH_KEY, agent_id)
            else:
                out.srem(WATCH_KEY, agent_id)
        out.execute()
    return changes


def judge(
    policy: AlertPolicy,
    state: dict[str, Any],
    agent_id: str,
    cur: dict[str, int],
    prev: dict[str, int],
    latencies: list[float],
    day_tasks: int,
    day_counterparties: int,
    prev_bucket: int,
    now: float,
    fleet: str | None = None,
) -> list[Change]:
    """One agent's signals over the current and previous windows (state mutated in place)."""
    b = policy.behaviour
    a = policy.agent
    conds: dict[str, list[float]] = state.setdefault("c", {})
    bases: dict[str, list[float]] = state.setdefault("b", {})
    tasks = cur.get("tasks", 0) + prev.get("tasks", 0)
    calls = cur.get("calls", 0) + prev.get("calls", 0)
    unique = cur.get("unique", 0) + prev.get("unique", 0)
    retries = cur.get("retries", 0) + prev.get("retries", 0)
    escalated = cur.get("escalated", 0) + prev.get("escalated", 0)
    enough = tasks >= b.min_tasks
    out: list[Change] = []

    def step(name: str, holding: bool | None, value: object = "", threshold: object = "") -> None:
        # No activity at all: nothing is abnormal, and an open signal resolves.
        if not tasks and name != "counterparty_diversity":
            holding = False
        change = track(conds, RULES[name], holding, now, agent_id, value, threshold, fleet=fleet)
        if change is not None:
            out.append(change)

    per_task = calls / tasks if tasks else 0.0
    unique_per_task = unique / tasks if tasks else 0.0
    base = baseline_ready(bases.get("calls_per_task"), b.baseline_windows)
    step(
        "tool_calls_per_task",
        None if not enough or base is None else per_task > b.tool_calls_per_task_factor * base,
        per_task,
        "" if base is None else b.tool_calls_per_task_factor * base,
    )
    base = baseline_ready(bases.get("unique_per_task"), b.baseline_windows)
    step(
        "unique_tools_per_task",
        None
        if not enough or base is None
        else unique_per_task > b.unique_tools_per_task_factor * base,
        unique_per_task,
        "" if base is None else b.unique_tools_per_task_factor * base,
    )
    ratio = retries / calls if calls else 0.0
    step("retry_ratio", (ratio > b.retry_ratio) if enough and calls else None, ratio, b.retry_ratio)
    rate = escalated / tasks if tasks else 0.0
    step("escalation_rate", (rate > b.escalation_rate) if enough else None, rate, b.escalation_rate)
    if len(latencies) >= b.min_tasks:
        p50, p99 = percentile(latencies, 0.5) or 0.0, percentile(latencies, 0.99) or 0.0
        step(
            "decision_latency",
            p50 > 0 and p99 > b.decision_latency_p99_over_p50 * p50,
            p99 / p50 if p50 else 0.0,
            b.decision_latency_p99_over_p50,
        )
    else:
        step("decision_latency", None)
    step(
        "counterparty_diversity",
        (day_counterparties < b.min_counterparties_per_day)
        if day_tasks
        else (False if conds.get("behaviour.counterparty_diversity") else None),
        day_counterparties,
        b.min_counterparties_per_day,
    )

    # The previous window is finished: learn from it once, if it raised nothing.
    p_tasks = prev.get("tasks", 0)
    if state.get("f", -1) < prev_bucket and p_tasks >= b.min_tasks:
        state["f"] = prev_bucket
        calm = not any(
            conds.get(RULES[n].name) for n in ("tool_calls_per_task", "unique_tools_per_task")
        )
        if calm:
            learn(
                bases, "calls_per_task", prev.get("calls", 0) / p_tasks, now, a.baseline_half_life_s
            )
            learn(
                bases,
                "unique_per_task",
                prev.get("unique", 0) / p_tasks,
                now,
                a.baseline_half_life_s,
            )
    return out


def check_and_apply(deps: MonitorDeps) -> list[Change]:
    """The beat task's body: judge, name each signalling agent's fleet, record and hand over."""
    now = deps.now()
    changes = check(deps.redis, deps.policy.alerts, now)
    if not changes:
        return []
    subjects = sorted({c.subject for c in changes})
    with deps.sessions() as session:
        fleets = dict(
            session.execute(
                select(Agent.agent_id, Agent.fleet).where(Agent.agent_id.in_(subjects))
            ).all()
        )
    changes = [dataclasses.replace(c, fleet=fleets.get(c.subject)) for c in changes]
    apply_changes(deps.sessions, changes, deps.handoff, now)
    return changes


__all__ = ["RULES", "TaskLog", "check", "check_and_apply", "ingest", "judge"]
