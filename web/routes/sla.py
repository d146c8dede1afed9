"""SLA enforcement over HTTP: budgets, episodes and the tiers they reached, acks, checks.

Prometheus: the API registers the SLA collector (:mod:`fleet.sla.metrics`) on
the default registry when it starts (web/app.py), which /metrics serves.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Depends, Query, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from fleet.approvals.service import same_person
from fleet.identity import Permission, Principal
from fleet.runtime import Runtime
from fleet.sla.episodes import EpisodeClosed, EpisodeError, EpisodeNotFound
from tasks.sla import evaluate_agent
from web.app_auth import require
from web.deps import RuntimeDep
from web.problems import ProblemError

router = APIRouter(prefix="/api/v1/sla", tags=["sla"])

Reader = Annotated[Principal, Depends(require(Permission.SLA_READ))]
Acker = Annotated[Principal, Depends(require(Permission.SLA_ACK))]
Checker = Annotated[Principal, Depends(require(Permission.SLA_CHECK))]


def _redis(rt: Runtime) -> redis.Redis | None:
    r = rt.redis
    try:
        r.ping()
    except redis.RedisError:
        return None
    return r


class Ack(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str = Field(default="", max_length=2000)
    # Deprecated: the caller acknowledges. If given it must name the caller.
    by: str | None = Field(default=None, min_length=1, max_length=128)


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(default="api", min_length=1, max_length=128)
    counterparty: str | None = Field(default=None, max_length=128)
    amount: str | None = Field(default=None, pattern=r"^\d{1,12}(\.\d{1,2})?$")


@router.get("/status")
def fleet_status(rt: RuntimeDep, _: Reader, fleet: str | None = None) -> dict[str, Any]:
    """Per fleet: budget left, time to exhaustion, burn alerts firing; open and recent episodes."""
    from fleet.sla.status import fleet_report

    return fleet_report(rt.sessions, rt.settings.policy, rt.clock.now(), fleet=fleet, r=_redis(rt))


@router.get("/agents/{agent_id}", responses={404: {"description": "No such agent."}})
def agent_status(rt: RuntimeDep, _: Reader, agent_id: str) -> dict[str, Any]:
    from fleet.sla.status import agent_report

    report = agent_report(rt.sessions, rt.settings.policy, rt.clock.now(), agent_id, r=_redis(rt))
    if report is None:
        raise ProblemError(status.HTTP_404_NOT_FOUND, f"no agent {agent_id!r}", error="NotFound")
    return report


@router.post("/agents/{agent_id}/check", status_code=status.HTTP_202_ACCEPTED)
async def check_agent(_: Checker, agent_id: str, body: Check | None = None) -> dict[str, Any]:
    """Check the agent now on the sla queue (opens an episode if it is in breach)."""
    body = body or Check()
    kwargs = {
        "agent_id": agent_id,
        "source": body.source,
        "counterparty": body.counterparty,
        "amount": body.amount,
    }
    result = await run_in_threadpool(
        evaluate_agent.apply_async, kwargs={k: v for k, v in kwargs.items() if v is not None}
    )
    return {"task_id": result.id, "agent_id": agent_id}


@router.get("/episodes")
def list_episodes(
    rt: RuntimeDep,
    _: Reader,
    state: Literal["open", "closed"] | None = None,
    agent_id: str | None = None,
    fleet: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    from fleet.sla.status import episodes

    return episodes(
        rt.sessions,
        rt.clock.now(),
        state=state,
        agent_id=agent_id,
        fleet=fleet,
        limit=limit,
    )


@router.get("/episodes/{episode_id}", responses={404: {"description": "No such episode."}})
def get_episode(rt: RuntimeDep, _: Reader, episode_id: str) -> dict[str, Any]:
    from fleet.sla.status import episode_detail

    detail = episode_detail(rt.sessions, episode_id, rt.clock.now())
    if detail is None:
        raise ProblemError(
            status.HTTP_404_NOT_FOUND, f"no episode {episode_id!r}", error="NotFound"
        )
    return detail


@router.post(
    "/episodes/{episode_id}/ack",
    responses={
        403: {"description": "Lacks sla:ack, or the body names someone other than the caller."},
        404: {"description": "No such episode."},
        409: {"description": "The episode is closed."},
    },
)
def acknowledge(rt: RuntimeDep, principal: Acker, episode_id: str, body: Ack) -> dict[str, Any]:
    """Acknowledge as the caller: tiers 3-4 wait until it times out; tiers 1-2 go on."""
    from fleet.sla.service import acknowledge_episode

    if body.by is not None and not (
        same_person(body.by, principal.principal_id) or same_person(body.by, principal.name)
    ):
        raise ProblemError(
            403,
            f"by {body.by!r} is not the authenticated principal {principal.principal_id}",
            error="ActorMismatch",
        )
    clock = rt.clock
    try:
        ep = acknowledge_episode(
            rt.sessions,
            rt.settings.policy,
            clock,
            episode_id,
            principal.principal_id,
            body.note,
            attribution=principal.audit_fields(),
        )
    except EpisodeNotFound as exc:
        raise ProblemError(status.HTTP_404_NOT_FOUND, str(exc), error="NotFound") from None
    except (EpisodeClosed, EpisodeError) as exc:
        raise ProblemError(status.HTTP_409_CONFLICT, str(exc), error=type(exc).__name__) from None
    return ep.to_dict(clock.now())


@router.get("/templates")
def templates(rt: RuntimeDep, _: Reader) -> dict[str, dict[str, Any]]:
    from fleet.sla.contracts import templates as all_templates

    return all_templates(rt.settings.policy)
