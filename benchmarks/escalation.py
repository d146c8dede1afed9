"""`fleet bench escalation-flood`: a tier-4 freeze sent behind a flood of tier-1 actions.

One worker per tier queue keeps the freeze prompt. The limit is the freeze's own
gateway calls (freeze_wallet, then send_message) from a bare asyncio client over
the gateway package's keep-alive pool;
the ratio is how long the freeze took through the queue against it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from benchmarks.common import (
    LimitRun,
    Phases,
    bare_client_limit,
    celery_sender,
    insert_bench_agents,
    limit_fields,
    limit_line,
    seeded_ids,
    sessions_for,
    workdir,
)
from fleet.gateway import Auth


def run_flood(
    stack: Any, actions: int, *, drain: bool = False, echo: Any = click.echo
) -> dict[str, Any]:
    """Put ACTIONS tier-1 actions on escalation.tier1, then send one tier-4 freeze; time the freeze
    and see how much tier-1 work is still waiting when it is done. Workers for escalation.tier1 and
    escalation.tier4 must be running on the stack."""
    import uuid as _uuid
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import func, insert, select

    from fleet.clock import ManualClock
    from fleet.escalation.engine import EngineDeps, evaluate
    from fleet.hotstate import connect
    from fleet.sla.models import ActionStatus, SlaEpisode, SlaEscalation
    from fleet.storage.db import write_connection
    from fleet.storage.records import Agent, AgentStatus

    settings, sessions, r = (
        stack.settings,
        sessions_for(stack.settings),
        connect(stack.settings.redis_url),
    )
    now = datetime.now(UTC)
    clock = ManualClock(now)
    flood_agents = [f"flood{i:05d}-{_uuid.uuid4().hex[:8]}" for i in range(actions)]
    insert_bench_agents(sessions, flood_agents, fleet="flood", policy=settings.policy)
    [target] = seeded_ids(stack.sandbox(), 1, "frz", profile="dead")
    insert_bench_agents(sessions, [target], fleet="flood", policy=settings.policy)

    def episode(agent: str, opened: datetime) -> dict[str, Any]:
        return {
            "episode_id": _uuid.uuid4().hex,
            "agent_id": agent,
            "fleet": "flood",
            "sla_id": f"sla-{agent}",
            "state": "open",
            "open_agent": agent,
            "breached_terms": ["uptime_pct"],
            "opened_at": opened,
            "opened_by": "bench",
            "last_breach_at": opened,
            "compliant_streak": 0,
        }

    flood_eps = [episode(a, now) for a in flood_agents]
    target_ep = episode(target, now - timedelta(minutes=31))
    with write_connection(sessions) as conn:
        for start in range(0, len(flood_eps), 1000):
            conn.execute(insert(SlaEpisode), flood_eps[start : start + 1000])
        conn.execute(insert(SlaEpisode), [target_ep])
        # The target has been escalating for 31 minutes: tiers 1-3 are behind it.
        conn.execute(
            insert(SlaEscalation),
            [
                {
                    "episode_id": target_ep["episode_id"],
                    "tier": t,
                    "action": a,
                    "task": f"escalation.tier{t}.{a}",
                    "status": "done",
                    "dispatched_at": now - timedelta(minutes=31 - m),
                    "episode_age_s": m * 60,
                    "dispatch_count": 1,
                    "attempts": 1,
                    "steps": {},
                    "result": {},
                }
                for t, a, m in ((1, "remediate", 0), (2, "reroute", 5), (3, "notify", 15))
            ],
        )
    engine = EngineDeps(
        sessions, settings.policy.escalation, clock, celery_sender(stack.celery()), redis=r
    )

    def tier1(done: bool) -> int:
        wanted = (
            [s.value for s in ActionStatus if s.finished]
            if done
            else [ActionStatus.DISPATCHED.value, ActionStatus.RUNNING.value]
        )
        with sessions() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(SlaEscalation)
                    .where(
                        SlaEscalation.tier == 1,
                        SlaEscalation.status.in_(wanted),
                        SlaEscalation.episode_id != target_ep["episode_id"],
                    )
                )
                or 0
            )

    started = time.perf_counter()
    sent = evaluate(engine, [e["episode_id"] for e in flood_eps])
    send_s = time.perf_counter() - started
    echo(f"{len(sent)} tier-1 actions sent to escalation.tier1 in {send_s:.2f} s")
    deadline = time.monotonic() + 120
    while tier1(done=True) < min(50, actions):  # the tier-1 workers are busy draining
        if time.monotonic() > deadline:
            raise RuntimeError("the tier-1 worker is not draining")
        time.sleep(0.05)

    freeze_started = time.perf_counter()
    [dispatch] = evaluate(engine, [target_ep["episode_id"]])
    assert dispatch.tier == 4
    deadline = time.monotonic() + 60
    while True:
        with sessions() as s:
            row = s.get(SlaEscalation, (target_ep["episode_id"], 4))
            status = row.status if row else None
        if status in ("done", "failed"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"tier 4 not done after 60 s (status {status})")
        time.sleep(0.02)
    freeze_s = time.perf_counter() - freeze_started
    queued, pending, finished = r.llen("escalation.tier1"), tier1(done=False), tier1(done=True)
    with sessions() as s:
        agent = s.get(Agent, target)
        paused = agent is not None and agent.status == AgentStatus.PAUSED
    frozen = bool(stack.sandbox().agent(target)["wallet"]["frozen"])
    echo(
        f"tier-4 freeze done in {freeze_s:.3f} s (status {status}, agent paused {paused}, wallet "
        f"frozen {frozen}); "
        f"tier-1 still waiting: {pending} of {actions} ({queued} in the queue, {finished} done)"
    )
    out = {
        "actions": actions,
        "send_s": round(send_s, 2),
        "freeze_s": round(freeze_s, 3),
        "freeze_status": status,
        "paused": paused,
        "wallet_frozen": frozen,
        "tier1_pending_at_freeze": pending,
        "tier1_queued_at_freeze": queued,
        "tier1_done_at_freeze": finished,
    }
    if drain:
        deadline = time.monotonic() + 1800
        while tier1(done=False):
            if time.monotonic() > deadline:
                raise RuntimeError("tier-1 backlog not drained after 30 min")
            time.sleep(0.5)
        out["tier1_drained_s"] = round(time.perf_counter() - started, 1)
        echo(f"tier-1 backlog drained {out['tier1_drained_s']} s after the flood was sent")
    return out


def run(actions: int, drain: bool, keep: str | None) -> None:
    from stack.local import local_stack

    with workdir(keep, "fleet-bench-flood-") as base:
        with local_stack(base) as stack:
            stack.start_worker(["escalation.tier1"], concurrency=4, pool="threads", name="tier1")
            stack.start_worker(["escalation.tier4"], concurrency=2, pool="threads", name="tier4")
            out = run_flood(stack, actions, drain=drain)
            limit = freeze_limit(stack)
            click.echo(
                limit_line(limit, out["freeze_s"], "bare client, mean of 20 freezes one at a time")
            )
            click.echo(json.dumps({**out, **limit_fields(out["freeze_s"], limit.seconds)}))


def freeze_limit(stack: Any, repeats: int = 20) -> LimitRun:
    """The tier-4 freeze's gateway calls (freeze the wallet, then the notice from the admin
    agent to the operator), one after the other, for REPEATS other agents with a wallet in
    turn; ``seconds`` is the mean per freeze (one freeze of two calls is too short to time)."""
    from fleet.gateway import operations as ops

    gateway = stack.settings.gateway
    reason = "SLA violation episode limit: tier 4 freeze"
    units: list[Phases] = [
        [
            [ops.freeze_wallet(agent)],
            [
                ops.send_message(
                    gateway.admin_agent_id,
                    gateway.operator_agent_id,
                    "text",
                    f"SLA breach: {agent} frozen (tier 4)",
                    reason,
                    metadata={"priority": "urgent", "episode_id": "limit"},
                    auth=Auth.ADMIN,
                )
            ],
        ]
        for agent in seeded_ids(stack.sandbox(), repeats, "frzlim", profile="dead")
    ]
    run = bare_client_limit(
        stack.settings.gateway_url, gateway.admin_key.get_secret_value(), units, 1
    )
    return LimitRun(run.seconds / repeats, run.calls, run.failed)
