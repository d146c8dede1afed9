"""The kill switch: pause the whole control loop, freeze one agent, freeze a fleet.

* :func:`pause_loop` stores the pause (table ``control_pauses``) and sets the hot flag in
  Redis (:data:`LOOP_KEY`). While it holds, the monitoring sweep plans nothing, escalation
  actions wait, work dispatch holds its tasks and provisioning steps wait (each asks
  :class:`LoopState`). Pausing is ``pause_control_loop`` in the approval matrix (MEDIUM by
  default: it acts at once and lands in the post-hoc review queue).
* :func:`resume_loop` lifts it: ``resume_control_loop`` (HIGH) — nothing changes until a
  person other than the one who asked approves; the approvals sweep then sends
  :data:`RESUME_TASK` with ``approval_id`` and the resume claims it and acts.
* :func:`freeze_agent` pauses one agent and freezes its wallet at the gateway; its release
  is the existing ``release_agent`` request (fleet/approvals/release.py).
* :func:`freeze_fleet` does that for every active agent of a fleet and records which ones
  (table ``fleet_freezes``); :func:`release_fleet` (``release_fleet``, HIGH) undoes exactly
  those.
* :func:`sync` (beat) re-asserts the database into Redis.

Every change is audited with the person who asked (``user:<id>`` or the CLI's name).
Nothing here knows Celery: the task names are strings the approvals sweep sends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.policy import ControlPolicy
from fleet import audit
from fleet.approvals import Approvals, Gate
from fleet.approvals.gate import Held, clear
from fleet.approvals.models import RequestStatus
from fleet.approvals.release import request_release
from fleet.clock import Clock
from fleet.control.models import ControlPause, FleetFreeze
from fleet.gateway import Gateway
from fleet.gateway import operations as ops
from fleet.gateway.errors import GatewayError, NotFound
from fleet.storage import wallets
from fleet.storage.db import write_session
from fleet.storage.records import Agent, AgentStatus

log = logging.getLogger(__name__)

LOOP = "loop"
LOOP_SUBJECT = "control-loop"
PREFIX = "fleet:control:"
LOOP_KEY = f"{PREFIX}loop-paused"
FLEETS_KEY = f"{PREFIX}fleets-frozen"  # hash: fleet -> reason

PAUSE_ACTION = "pause_control_loop"
RESUME_ACTION = "resume_control_loop"
FREEZE_AGENT_ACTION = "freeze_agent"
FREEZE_FLEET_ACTION = "freeze_fleet"
RELEASE_FLEET_ACTION = "release_fleet"

# Sent by the approvals sweep once a resume or a fleet release is approved.
RESUME_TASK = "audit.control.resume_loop"
RELEASE_FLEET_TASK = "audit.control.release_fleet"
# Sent by a fleet freeze: its agents' wallets frozen at the gateway by a worker, a chunk
# a message, so the freeze itself answers at once whatever the fleet's size.
FREEZE_WALLETS_TASK = "audit.control.freeze_wallets"
WALLETS_PER_MESSAGE = 200

MAX_NAME = 128
# Who the audit names for what a worker does on a person's behalf (the wallets).
ACTOR = "fleet-commander/control"


class ControlError(ValueError):
    """A pause, freeze or release that cannot be asked for (the message names the problem)."""


class UnknownTarget(ControlError):
    """The agent or fleet named is not one we know."""


class NotHeld(ControlError):
    """A release or resume of something that is not paused or frozen now."""


class LoopPaused(Exception):  # noqa: N818 - a state, not a failure
    """The control loop is paused: this work waits (``retry_in`` seconds)."""

    def __init__(self, reason: str, retry_in: float) -> None:
        super().__init__(f"control loop paused: {reason}")
        self.reason = reason
        self.retry_in = retry_in


@dataclass(frozen=True)
class ControlDeps:
    sessions: sessionmaker[Session]
    redis: redis.Redis
    approvals: Approvals
    clock: Clock
    gateway: Gateway
    policy: ControlPolicy
    send: Callable[[list[tuple[str, dict[str, Any]]]], None]  # messages to the workers


class LoopState:
    """Is the control loop paused? The hot flag in Redis; the database when Redis is away
    (a paused loop must not run because Redis restarted)."""

    def __init__(
        self, r: redis.Redis, sessions: sessionmaker[Session], policy: ControlPolicy
    ) -> None:
        self.redis, self.sessions, self.policy = r, sessions, policy

    def reason(self) -> str | None:
        try:
            value = self.redis.get(LOOP_KEY)
        except redis.RedisError:
            with self.sessions() as s:
                row = s.get(ControlPause, LOOP)
                return None if row is None else _loop_reason(row)
        return None if value is None else str(value)

    def __call__(self) -> str | None:
        return self.reason()

    def check(self) -> None:
        """Raise :class:`LoopPaused` while the loop is paused."""
        reason = self.reason()
        if reason is not None:
            raise LoopPaused(reason, self.policy.recheck_s)

    def fleet_frozen(self, fleet: str) -> bool:
        try:
            return bool(self.redis.hexists(FLEETS_KEY, fleet))
        except redis.RedisError:
            with self.sessions() as s:
                return s.get(FleetFreeze, fleet) is not None


def _loop_reason(row: ControlPause) -> str:
    return f"paused by {row.paused_by}: {row.reason}"


# ---------------------------------------------------------------------------- checks


def check_person(by: str) -> str:
    by = (by or "").strip()
    if not by:
        raise ControlError("by: who asks must be named")
    if len(by) > 200:
        raise ControlError("by: at most 200 characters")
    return by


def check_reason(policy: ControlPolicy, reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ControlError("reason: must not be empty (say why, it is audited)")
    if len(reason) > policy.max_reason_chars:
        raise ControlError(f"reason: at most {policy.max_reason_chars} characters")
    return reason


def check_name(field: str, value: str) -> str:
    if not isinstance(value, str):
        raise ControlError(f"{field}: expected text, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise ControlError(f"{field}: must not be empty")
    if len(value) > MAX_NAME or any(c.isspace() for c in value):
        raise ControlError(f"{field}: at most {MAX_NAME} characters, no spaces, got {value!r}")
    return value


# ---------------------------------------------------------------------------- the loop


def pause_loop(deps: ControlDeps, by: str, reason: str) -> dict[str, Any]:
    """Pause the control loop now (the matrix permitting); idempotent while it holds."""
    by, reason = check_person(by), check_reason(deps.policy, reason)
    with deps.sessions() as s:
        held = s.get(ControlPause, LOOP)
        if held is not None:
            deps.redis.set(LOOP_KEY, _loop_reason(held))
            return {"status": "already-paused", **_pause_view(held)}
    gate = deps.approvals.request(
        PAUSE_ACTION, LOOP_SUBJECT, by, reason=reason, details={"scope": LOOP}
    )
    if not gate.may_run:
        return {"status": "awaiting-approval", "request_id": gate.request_id}
    now = deps.clock.now()
    with write_session(deps.sessions) as s:
        row = ControlPause(scope=LOOP, paused_by=by, reason=reason, paused_at=now)
        s.merge(row)
    # The database first: a sync in between re-asserts it, never loses it.
    deps.redis.set(LOOP_KEY, _loop_reason(row))
    audit.record(
        actor=by,
        action="control_loop_paused",
        subject=LOOP_SUBJECT,
        details={"reason": reason, "review_request": gate.request_id},
        article=audit.Article.HUMAN_OVERSIGHT,
        approval=gate.approval,
        approval_id=gate.request_id,
        time=now,
    )
    return {"status": "paused", "paused_by": by, "reason": reason, "paused_at": now.isoformat()}


def request_resume(deps: ControlDeps, by: str, reason: str) -> Gate:
    by, reason = check_person(by), check_reason(deps.policy, reason)
    with deps.sessions() as s:
        if s.get(ControlPause, LOOP) is None:
            raise NotHeld("the control loop is not paused")
    return deps.approvals.request(
        RESUME_ACTION,
        LOOP_SUBJECT,
        by,
        reason=reason,
        details={"scope": LOOP},
        task=RESUME_TASK,
        task_kwargs={"requested_by": by, "reason": reason},
    )


def resume_loop(
    deps: ControlDeps, requested_by: str, *, approval_id: str | None = None, reason: str = ""
) -> dict[str, Any]:
    """Lift the pause under an approval of exactly this (claimed once); without one, ask."""
    passed = clear(
        deps.approvals,
        action=RESUME_ACTION,
        subject=LOOP_SUBJECT,
        approval_id=approval_id,
        ask=lambda: request_resume(deps, requested_by, reason),
    )
    if isinstance(passed, Held):
        return {"status": "awaiting-approval", "request_id": passed.request_id}
    now = deps.clock.now()
    with write_session(deps.sessions) as s:
        row = s.get(ControlPause, LOOP)
        if row is not None:
            s.delete(row)
    deps.redis.delete(LOOP_KEY)
    audit.record(
        actor=requested_by,
        action="control_loop_resumed",
        subject=LOOP_SUBJECT,
        details={"approvers": list(passed.approvers), "requested_by": requested_by},
        article=audit.Article.HUMAN_OVERSIGHT,
        approval=passed.approval,
        approval_id=passed.request_id,
        time=now,
    )
    return {"status": "resumed", "approvers": list(passed.approvers)}


# ---------------------------------------------------------------------------- agents


def _freeze_wallet(gateway: Gateway, agent_id: str) -> str:
    try:
        gateway.run(ops.freeze_wallet(agent_id))
        return "frozen"
    except NotFound:
        return "no wallet"
    except GatewayError as exc:
        log.warning("freezing the wallet of %s failed: %s", agent_id, exc)
        return f"failed: {type(exc).__name__}"


def _fleet_of_agent(deps: ControlDeps, agent_id: str) -> str | None:
    with deps.sessions() as s:
        agent = s.get(Agent, agent_id)
        if agent is None:
            raise UnknownTarget(f"agent_id: no agent {agent_id!r}")
        return agent.fleet


def freeze_agent(deps: ControlDeps, agent_id: str, by: str, reason: str) -> dict[str, Any]:
    """Pause one agent and freeze its wallet; released through a ``release_agent`` request."""
    agent_id, by = check_name("agent_id", agent_id), check_person(by)
    reason = check_reason(deps.policy, reason)
    fleet = _fleet_of_agent(deps, agent_id)
    gate = deps.approvals.request(
        FREEZE_AGENT_ACTION, agent_id, by, fleet=fleet, reason=reason, details={"by": by}
    )
    if not gate.may_run:
        return {"status": "awaiting-approval", "request_id": gate.request_id}
    now = deps.clock.now()
    with write_session(deps.sessions) as s:
        agent = s.get(Agent, agent_id)
        assert agent is not None
        before = str(agent.status)
        if agent.status == AgentStatus.ACTIVE:
            agent.status = AgentStatus.PAUSED
            agent.updated_at = now
    wallet = _freeze_wallet(deps.gateway, agent_id)
    if wallet == "frozen":
        wallets.note(deps.sessions, [agent_id], frozen=True, by=by, at=now)
    audit.record(
        actor=by,
        action="agent_frozen",
        subject=agent_id,
        fleet=fleet,
        details={"reason": reason, "status_before": before, "wallet": wallet},
        article=audit.Article.HUMAN_OVERSIGHT,
        approval=gate.approval,
        approval_id=gate.request_id,
        time=now,
    )
    return {"status": "frozen", "agent_id": agent_id, "wallet": wallet}


def request_agent_release(deps: ControlDeps, agent_id: str, by: str, reason: str) -> dict[str, Any]:
    """Ask to release a frozen agent (``release_agent``, HIGH): another person approves."""
    agent_id, by = check_name("agent_id", agent_id), check_person(by)
    reason = check_reason(deps.policy, reason)
    fleet = _fleet_of_agent(deps, agent_id)
    gate = request_release(deps.approvals, agent_id, by, reason=reason, fleet=fleet)
    return {"status": "awaiting-approval", "request_id": gate.request_id, "risk": gate.risk}


# ---------------------------------------------------------------------------- fleets


def freeze_fleet(deps: ControlDeps, fleet: str, by: str, reason: str) -> dict[str, Any]:
    """Pause every active agent of ``fleet`` and freeze their wallets; recorded, audited."""
    fleet, by = check_name("fleet", fleet), check_person(by)
    reason = check_reason(deps.policy, reason)
    with deps.sessions() as s:
        if s.get(FleetFreeze, fleet) is not None:
            return {"status": "already-frozen", "fleet": fleet}
        known = s.scalar(select(Agent.agent_id).where(Agent.fleet == fleet).limit(1))
    if known is None:
        raise UnknownTarget(f"fleet: no agent in fleet {fleet!r}")
    gate = deps.approvals.request(
        FREEZE_FLEET_ACTION,
        audit.fleet_subject(fleet),
        by,
        fleet=fleet,
        reason=reason,
        details={"fleet": fleet},
    )
    if not gate.may_run:
        return {"status": "awaiting-approval", "request_id": gate.request_id}
    now = deps.clock.now()
    with write_session(deps.sessions) as s:
        agents = list(
            s.scalars(
                select(Agent)
                .where(Agent.fleet == fleet, Agent.status == AgentStatus.ACTIVE)
                .with_for_update()
            )
        )
        for agent in agents:
            agent.status = AgentStatus.PAUSED
            agent.updated_at = now
        paused = [a.agent_id for a in agents]
        s.add(FleetFreeze(fleet=fleet, frozen_by=by, reason=reason, frozen_at=now, agents=paused))
    deps.redis.hset(FLEETS_KEY, fleet, f"frozen by {by}: {reason}")
    audit.record(
        actor=by,
        action="fleet_frozen",
        subject=audit.fleet_subject(fleet),
        fleet=fleet,
        details={
            "reason": reason,
            "agents": len(paused),
            "wallets": "queued",
        },
        article=audit.Article.HUMAN_OVERSIGHT,
        approval=gate.approval,
        approval_id=gate.request_id,
        time=now,
    )
    deps.send(
        [
            (FREEZE_WALLETS_TASK, {"fleet": fleet, "agents": paused[i : i + WALLETS_PER_MESSAGE]})
            for i in range(0, len(paused), WALLETS_PER_MESSAGE)
        ]
    )
    return {"status": "frozen", "fleet": fleet, "agents": len(paused), "wallets": "queued"}


def freeze_wallets(deps: ControlDeps, fleet: str, agents: list[str]) -> dict[str, Any]:
    """Freeze the wallets of a frozen fleet's agents at the gateway (the worker's half of
    :func:`freeze_fleet`); nothing when the fleet was released meanwhile. Audited with
    the wallets that could not be frozen."""
    fleet = check_name("fleet", fleet)
    if not isinstance(agents, list):
        raise ControlError(f"agents: expected a list of agent ids, got {type(agents).__name__}")
    agents = [check_name("agent_id", a) for a in agents]
    with deps.sessions() as s:
        freeze = s.get(FleetFreeze, fleet)
        if freeze is None:
            return {"status": "released", "fleet": fleet, "frozen": 0}
        mine = set(freeze.agents or [])
    results = {a: _freeze_wallet(deps.gateway, a) for a in agents if a in mine}
    not_frozen = sorted(a for a, w in results.items() if w != "frozen")
    now = deps.clock.now()
    done = [a for a, w in results.items() if w == "frozen"]
    wallets.note(deps.sessions, done, frozen=True, by=freeze.frozen_by, at=now)
    audit.record(
        actor=ACTOR,
        action="fleet_wallets_frozen",
        subject=audit.fleet_subject(fleet),
        fleet=fleet,
        details={"agents": len(results), "wallets_not_frozen": not_frozen},
        article=audit.Article.HUMAN_OVERSIGHT,
        time=now,
    )
    return {"status": "frozen", "fleet": fleet, "frozen": len(done)}


def request_fleet_release(deps: ControlDeps, fleet: str, by: str, reason: str) -> Gate:
    fleet, by = check_name("fleet", fleet), check_person(by)
    reason = check_reason(deps.policy, reason)
    with deps.sessions() as s:
        if s.get(FleetFreeze, fleet) is None:
            raise NotHeld(f"fleet: {fleet!r} is not frozen")
    return deps.approvals.request(
        RELEASE_FLEET_ACTION,
        audit.fleet_subject(fleet),
        by,
        fleet=fleet,
        reason=reason,
        details={"fleet": fleet},
        task=RELEASE_FLEET_TASK,
        task_kwargs={"fleet": fleet, "requested_by": by, "reason": reason},
    )


def release_fleet(
    deps: ControlDeps,
    fleet: str,
    requested_by: str,
    *,
    approval_id: str | None = None,
    reason: str = "",
) -> dict[str, Any]:
    """Make the agents the freeze paused active again and unfreeze their wallets, under an
    approval of exactly this fleet's release (claimed once); without one, ask."""
    passed = clear(
        deps.approvals,
        action=RELEASE_FLEET_ACTION,
        subject=audit.fleet_subject(fleet),
        approval_id=approval_id,
        ask=lambda: request_fleet_release(deps, fleet, requested_by, reason),
    )
    if isinstance(passed, Held):
        return {"status": "awaiting-approval", "request_id": passed.request_id}
    now = deps.clock.now()
    with write_session(deps.sessions) as s:
        row = s.get(FleetFreeze, fleet)
        listed = [str(a) for a in (row.agents if row else [])]
        for agent in s.scalars(select(Agent).where(Agent.agent_id.in_(listed))):
            if agent.status == AgentStatus.PAUSED:
                agent.status = AgentStatus.ACTIVE
                agent.updated_at = now
        if row is not None:
            s.delete(row)
    deps.redis.hdel(FLEETS_KEY, fleet)
    unfrozen = []
    for agent_id in listed:
        with contextlib.suppress(NotFound):
            deps.gateway.run(ops.unfreeze_wallet(agent_id))
            unfrozen.append(agent_id)
    wallets.note(deps.sessions, unfrozen, frozen=False, by=requested_by, at=now)
    audit.record(
        actor=requested_by,
        action="fleet_released",
        subject=audit.fleet_subject(fleet),
        fleet=fleet,
        details={
            "agents": len(listed),
            "approvers": list(passed.approvers),
            "requested_by": requested_by,
        },
        article=audit.Article.HUMAN_OVERSIGHT,
        approval=passed.approval,
        approval_id=passed.request_id,
        time=now,
    )
    return {"status": "released", "fleet": fleet, "agents": len(listed)}


# ---------------------------------------------------------------------------- reading, sync


def _pause_view(row: ControlPause) -> dict[str, Any]:
    return {
        "paused_by": row.paused_by,
        "reason": row.reason,
        "paused_at": row.paused_at.isoformat(),
    }


def _pending(approvals: Approvals, actions: Sequence[str]) -> list[dict[str, Any]]:
    return [
        v.to_dict()
        for v in approvals.list_requests(status=RequestStatus.PENDING, limit=500)
        if v.action in actions
    ]


def state(deps: ControlDeps) -> dict[str, Any]:
    """What the kill switch holds now, and the releases waiting for approval."""
    with deps.sessions() as s:
        pause = s.get(ControlPause, LOOP)
        fleets = [
            {
                "fleet": f.fleet,
                "frozen_by": f.frozen_by,
                "reason": f.reason,
                "frozen_at": f.frozen_at.isoformat(),
                "agents": len(f.agents or []),
            }
            for f in s.scalars(select(FleetFreeze).order_by(FleetFreeze.fleet))
        ]
        paused_agents = [
            {"agent_id": a.agent_id, "fleet": a.fleet}
            for a in s.scalars(
                select(Agent)
                .where(Agent.status == AgentStatus.PAUSED)
                .order_by(Agent.agent_id)
                # a page's worth: the console pages the rest
                .limit(200)
            )
        ]
    return {
        "loop": {"paused": pause is not None, **(_pause_view(pause) if pause else {})},
        "fleets": fleets,
        "paused_agents": paused_agents,
        "pending": _pending(deps.approvals, (RESUME_ACTION, RELEASE_FLEET_ACTION, "release_agent")),
    }


def sync(deps: ControlDeps) -> dict[str, int]:
    """Redis made true to the database: the pause and the fleet freezes re-asserted, and a
    flag the database no longer holds (its release was lost in between) dropped."""
    with deps.sessions() as s:
        pause = s.get(ControlPause, LOOP)
        fleets = {
            f.fleet: f"frozen by {f.frozen_by}: {f.reason}" for f in s.scalars(select(FleetFreeze))
        }
    pipe = deps.redis.pipeline(transaction=True)
    if pause is None:
        pipe.delete(LOOP_KEY)
    else:
        pipe.set(LOOP_KEY, _loop_reason(pause))
    pipe.delete(FLEETS_KEY)
    for fleet, reason in fleets.items():
        pipe.hset(FLEETS_KEY, fleet, reason)
    pipe.execute()
    return {"paused": int(pause is not None), "fleets": len(fleets)}


Check = Callable[[], str | None]

__all__ = [
    "FLEETS_KEY",
    "FREEZE_WALLETS_TASK",
    "LOOP_KEY",
    "RELEASE_FLEET_TASK",
    "RESUME_TASK",
    "Check",
    "ControlDeps",
    "ControlError",
    "NotHeld",
    "UnknownTarget",
    "LoopPaused",
    "LoopState",
    "freeze_agent",
    "freeze_fleet",
    "freeze_wallets",
    "pause_loop",
    "release_fleet",
    "request_agent_release",
    "request_fleet_release",
    "request_resume",
    "resume_loop",
    "state",
    "sync",
]
