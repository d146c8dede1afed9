"""SLA enforcement over HTTP: budgets, episodes and the tiers they reached, acks, checks.

Prometheus: the API registers the SLA collector (:mod:`fleet.sla.metrics`) on
the default registry when it starts (web/app.py), which /metrics serves.
"""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field

from fleet.runtime import Runtime
from fleet.sla.episodes import EpisodeClosed, EpisodeError, EpisodeNotFound
from tasks.sla import evaluate_agent
from web.app_auth import require_token
from web.deps import RuntimeDep

router = APIRouter(prefix="/api/v1/sla", tags=["sla"], dependencies=[Depends(require_token)])


def _redis(rt: Runtime) -> redis.Redis | None:
    r = rt.redis
    try:
        r.ping()
    except redis.RedisError:
        return None
    return r


class Ack(BaseModel):
    by: str = Field(min_length=1, max_length=128)
    note: str = Field(default="", max_length=2000)


class Check(BaseModel):
    source: str = Field(default="api", min_length=1, max_length=128)
    counterparty: str | None = Field(default=None, max_length=128)
    amount: str | None = Field(default=None, pattern=r"^\d{1,12}(\.\d{1,2})?$")


@router.get("/status")
def fleet_status(rt: RuntimeDep, fleet: str | None = None) -> dict[str, Any]:
    """Per fleet: budget left, time to exhaustion, burn alerts firing; open and recent episodes."""
    from fleet.sla.status import fleet_report

    return fleet_report(rt.sessions, rt.settings.policy, rt.clock.now(), fleet=fleet, r=_redis(rt))


@router.get("/agents/{agent_id}")
def agent_status(rt: RuntimeDep, agent_id: str) -> dict[str, Any]:
    from fleet.sla.status import agent_report

    report = agent_report(rt.sessions, rt.settings.policy, rt.clock.now(), agent_id, r=_redis(rt))
    if report is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no agent {agent_id!r}")
    return report


@router.post("/agents/{agent_id}/check", status_code=status.HTTP_202_ACCEPTED)
def check_agent(agent_id: str, body: Check | None = None) -> dict[str, Any]:
    """Check the agent now on the sla queue (opens an episode if it is in breach)."""
    body = body or Check()
    kwargs = {
        "agent_id": agent_id,
        "source": body.source,
        "counterparty": body.counterparty,
        "amount": body.amount,
    }
    result = evaluate_agent.apply_async(kwargs={k: v for k, v in kwargs.items() if v is not None})
    return {"task_id": result.id, "agent_id": agent_id}


@router.get("/episodes")
def list_episodes(
    rt: RuntimeDep,
    state: str | None = None,
    agent_id: str | None = None,
    fleet: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    from fleet.sla.status import episodes

    if state not in (None, "open", "closed"):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "state must be open or closed")
    return episodes(
        rt.sessions,
        rt.clock.now(),
        state=state,
        agent_id=agent_id,
        fleet=fleet,
        limit=max(1, min(limit, 1000)),
    )


@router.get("/episodes/{episode_id}")
def get_episode(rt: RuntimeDep, episode_id: str) -> dict[str, Any]:
    from fleet.sla.status import episode_detail

    detail = episode_detail(rt.sessions, episode_id, rt.clock.now())
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no episode {episode_id!r}")
    return detail


@router.post("/episodes/{episode_id}/ack")
def acknowledge(rt: RuntimeDep, episode_id: str, body: Ack) -> dict[str, Any]:
    """Acknowledge: tiers 3-4 wait until the acknowledgement times out; tiers 1-2 go on."""
    from fleet.sla.service import acknowledge_episode

    clock = rt.clock
    try:
        ep = acknowledge_episode(
            rt.sessions, rt.settings.policy, clock, episode_id, body.by, body.note
        )
    except EpisodeNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except (EpisodeClosed, EpisodeError) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return ep.to_dict(clock.now())


@router.get("/templates")
def templates(rt: RuntimeDep) -> dict[str, dict[str, Any]]:
    from fleet.sla.contracts import templates as all_templates

    return all_templates(rt.settings.policy)
