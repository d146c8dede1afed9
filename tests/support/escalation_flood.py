"""A tier-4 freeze sent behind a flood of tier-1 actions, on a local stack's real workers.

Puts ``actions`` tier-1 actions on escalation.tier1, waits until the tier-1 worker is busy
draining them, then lets one episode come due for tier 4 and times its freeze; says how much
tier-1 work was still waiting when the freeze was done, and what the gateway holds of it.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select

from fleet.clock import ManualClock
from fleet.escalation.engine import EngineDeps, evaluate
from fleet.gateway import GatewayClient, WalletFrozen
from fleet.gateway import operations as ops
from fleet.hotstate import connect
from fleet.sla.models import ActionStatus, SlaEpisode, SlaEscalation
from fleet.storage.db import write_connection
from fleet.storage.records import Agent, AgentStatus
from stack.local import Stack
from tests.support.fleet_rows import insert_agents, seeded_ids, sessions_for


def _episode(agent: str, opened: datetime) -> dict[str, Any]:
    return {
        "episode_id": uuid.uuid4().hex,
        "agent_id": agent,
        "fleet": "flood",
        "sla_id": f"sla-{agent}",
        "state": "open",
        "open_agent": agent,
        "breached_terms": ["p99_latency_ms"],
        "opened_at": opened,
        "opened_by": "test",
        "last_breach_at": opened,
        "compliant_streak": 0,
    }


def run_flood(stack: Stack, actions: int) -> dict[str, Any]:
    """Workers for escalation.tier1 and escalation.tier4 must be running on the stack."""
    settings = stack.settings
    sessions = sessions_for(settings.sqlalchemy_url)
    r = connect(settings.redis_url)
    now = datetime.now(UTC)
    flood_agents = [f"flood{i:05d}-{uuid.uuid4().hex[:8]}" for i in range(actions)]
    insert_agents(sessions, flood_agents, fleet="flood", policy=settings.policy)
    [target] = seeded_ids(stack.sandbox().seed(1, prefix="frz", profile="idle"))
    insert_agents(sessions, [target], fleet="flood", policy=settings.policy)

    flood_eps = [_episode(a, now) for a in flood_agents]
    target_ep = _episode(target, now - timedelta(minutes=31))
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
    app = stack.celery()

    def send(messages: Any) -> None:
        with app.producer_or_acquire() as producer:
            for name, kwargs in messages:
                app.send_task(name, kwargs=kwargs, producer=producer, ignore_result=True)

    engine = EngineDeps(sessions, settings.policy.escalation, ManualClock(now), send, redis=r)

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

    sent = evaluate(engine, [e["episode_id"] for e in flood_eps])
    assert len(sent) == actions
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
    # The gateway's own word on the freeze: a deposit to the wallet is refused.
    with GatewayClient.from_settings(settings) as gateway:
        try:
            gateway.run(ops.deposit(target, "1.00", "freeze probe"))
            refused = False
        except WalletFrozen:
            refused = True
    return {
        "actions": actions,
        "freeze_s": round(freeze_s, 3),
        "freeze_status": status,
        "paused": paused,
        "wallet_frozen": bool(stack.sandbox().agent(target)["wallet"]["frozen"]),
        "deposit_refused": refused,
        "tier1_pending_at_freeze": pending,
        "tier1_queued_at_freeze": queued,
        "tier1_done_at_freeze": finished,
    }
