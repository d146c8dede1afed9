"""What `fleet sla status` and the API show: episodes, the tiers they reached, budgets left."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy
from fleet.sla.alerts import firing_alerts
from fleet.sla.budget import agent_budget, fleet_budgets
from fleet.sla.contracts import active_contracts, contract_for
from fleet.sla.episodes import EpisodeView, view
from fleet.sla.models import RESOLVE_TIER, EpisodeState, SlaDispute, SlaEpisode, SlaEscalation
from fleet.sla.service import last_sample, sweep_progress
from fleet.storage.records import Agent


def _t(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def escalations_of(session: Session, episode_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for start in range(0, len(episode_ids), 500):
        rows = session.scalars(
            select(SlaEscalation)
            .where(SlaEscalation.episode_id.in_(episode_ids[start : start + 500]))
            .order_by(SlaEscalation.episode_id, SlaEscalation.tier)
        ).all()
        for r in rows:
            out.setdefault(r.episode_id, []).append(
                {
                    "tier": r.tier,
                    "action": r.action,
                    "status": r.status,
                    "queue": r.queue,
                    "dispatched_at": _t(r.dispatched_at),
                    "episode_age_s": r.episode_age_s,
                    "finished_at": _t(r.finished_at),
                    "attempts": r.attempts,
                    "dispatch_count": r.dispatch_count,
                    "result": r.result or {},
                    "error": r.error,
                    "approval_id": r.approval_id,
                }
            )
    return out


def tier_reached(escalations: Sequence[dict[str, Any]]) -> int:
    return max((e["tier"] for e in escalations if e["tier"] != RESOLVE_TIER), default=0)


def _episode_dict(
    ep: EpisodeView, escalations: list[dict[str, Any]], now: datetime
) -> dict[str, Any]:
    out = ep.to_dict(now)
    out["tier_reached"] = tier_reached(escalations)
    out["escalations"] = escalations
    out["acknowledged"] = ep.acked(now)
    return out


def episodes(
    sessions: sessionmaker[Session],
    now: datetime,
    *,
    state: str | None = None,
    agent_id: str | None = None,
    fleet: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    stmt = select(SlaEpisode).order_by(SlaEpisode.opened_at.desc()).limit(limit)
    if state is not None:
        stmt = stmt.where(SlaEpisode.state == state)
    if agent_id is not None:
        stmt = stmt.where(SlaEpisode.agent_id == agent_id)
    if fleet is not None:
        stmt = stmt.where(SlaEpisode.fleet == fleet)
    with sessions() as s:
        rows = [view(e) for e in s.scalars(stmt)]
        escalations = escalations_of(s, [e.episode_id for e in rows])
    return [_episode_dict(e, escalations.get(e.episode_id, []), now) for e in rows]


def episode_detail(
    sessions: sessionmaker[Session], episode_id: str, now: datetime
) -> dict[str, Any] | None:
    with sessions() as s:
        ep = s.get(SlaEpisode, episode_id)
        if ep is None:
            return None
        escalations = escalations_of(s, [episode_id]).get(episode_id, [])
        disputes = [
            _dispute(d)
            for d in s.scalars(select(SlaDispute).where(SlaDispute.episode_id == episode_id))
        ]
        out = _episode_dict(view(ep), escalations, now)
    out["disputes"] = disputes
    return out


def _dispute(d: SlaDispute) -> dict[str, Any]:
    return {
        "dispute_id": d.dispute_id,
        "counterparty": d.counterparty,
        "claimed": d.claimed,
        "status": d.status,
        "opened_at": _t(d.opened_at),
        "resolved_at": _t(d.resolved_at),
        "resolution": d.resolution,
        "refund": d.refund,
        "notes": d.notes,
    }


def fleet_report(
    sessions: sessionmaker[Session],
    policy: Policy,
    now: datetime,
    *,
    fleet: str | None = None,
    r: redis.Redis | None = None,
    limit: int = 20,
) -> dict[str, Any]:
    budgets = fleet_budgets(sessions, policy.error_budget, now, fleet)
    open_eps = episodes(sessions, now, state=EpisodeState.OPEN, fleet=fleet, limit=1000)
    closed = episodes(sessions, now, state=EpisodeState.CLOSED, fleet=fleet, limit=limit)
    return {
        "now": now.isoformat(),
        "budgets": {name: b.to_dict() for name, b in budgets.items()},
        "alerts": firing_alerts(sessions, f"fleet:{fleet}" if fleet else None),
        "open_episodes": open_eps,
        "recently_closed": closed,
        "last_sweep": sweep_progress(r) if r is not None else None,
    }


def agent_report(
    sessions: sessionmaker[Session],
    policy: Policy,
    now: datetime,
    agent_id: str,
    *,
    r: redis.Redis | None = None,
    limit: int = 20,
) -> dict[str, Any] | None:
    with sessions() as s:
        agent = s.get(Agent, agent_id)
        if agent is None:
            return None
        contract = contract_for(
            policy, agent.sla_template, active_contracts(s, [agent_id]).get(agent_id)
        )
        head = {
            "agent_id": agent_id,
            "fleet": agent.fleet,
            "status": str(agent.status),
            "traffic_weight": agent.traffic_weight,
            "sla_template": contract.template,
            "sla_id": contract.sla_id,
            "terms": dict(contract.terms),
        }
        disputes = [
            _dispute(d)
            for d in s.scalars(
                select(SlaDispute)
                .where(SlaDispute.agent_id == agent_id)
                .order_by(SlaDispute.opened_at.desc())
                .limit(limit)
            )
        ]
    return {
        **head,
        "now": now.isoformat(),
        "budget": agent_budget(sessions, policy.error_budget, agent_id, now).to_dict(),
        "alerts": firing_alerts(sessions, f"agent:{agent_id}"),
        "last_sample": last_sample(r, agent_id) if r is not None else None,
        "episodes": episodes(sessions, now, agent_id=agent_id, limit=limit),
        "disputes": disputes,
    }
