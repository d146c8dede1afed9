"""The autoscaler's pass: per segment, gather the inputs, decide, log, and in enforce mode act.

Inputs, per segment (the agents sharing an ``id_prefix``):

- **pending tasks**: the sum of the in-flight counters (``fleet:inflight:{agent}`` in
  Redis) of the segment's active and retiring agents: work routing has dispatched to
  the segment and that has not finished. Tasks still on the routing queue belong to
  no segment yet (routing picks the agent), so they are not counted;
- **healthy agents**: active agents whose monitoring snapshot is at most
  ``scaling.snapshot_max_age_s`` old and classed healthy;
- **size**: active + provisioning agents (what ``min_agents`` / ``max_agents`` bound);
- **burn**: the fleet's spend today (UTC day) in the spend ledger, against its
  fleet-day budget (``budgets.fleet_day``, or the raised limit when one was approved).

Every decision, hold included, is a ``scaling_decisions`` row with those inputs. An
action (observe mode too, so both modes decide alike) starts the segment's cooldown
(``scaling.cooldown_s``). In enforce mode a scale-up sends one provisioning task that
adds the agents from the segment's own manifest group; a scale-down sends a graceful
retirement (stop routing → drain → …) for each of the N least useful agents. Each
action is an audit entry.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import redis
from sqlalchemy import desc, select
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy
from fleet.budgets.ledger import totals
from fleet.budgets.models import BudgetLimit
from fleet.clock import Clock
from fleet.hotstate import Lease, inflight_key
from fleet.monitoring.snapshot import Health, read_snapshot
from fleet.provisioning.manifest import AgentGroup
from fleet.provisioning.pipeline import AuditSink, JobSubmission, ProvisioningDeps, add_agents
from fleet.scaling.decide import Action, Decision, Inputs, decide
from fleet.scaling.models import Mode, ScalingDecision, SegmentScaling
from fleet.storage.db import write_session
from fleet.storage.records import Agent, AgentStatus

log = logging.getLogger(__name__)

ACTOR = "fleet-commander/autoscaler"
SCALE_UP_TASK = "provisioning.scaling.scale_up"
RETIRE_TASK = "provisioning.scaling.retire"

Message = tuple[str, dict[str, Any]]

# Agents that count towards a segment's size; the pending work of retiring ones still counts.
SIZED = (AgentStatus.ACTIVE, AgentStatus.PROVISIONING)
LOADED = (AgentStatus.ACTIVE, AgentStatus.RETIRING)


class ScalingError(Exception):
    """A scaling request that cannot be carried out (unknown segment, decision, agent)."""


@dataclass
class ScalingDeps:
    sessions: sessionmaker[Session]
    redis: redis.Redis
    policy: Policy
    clock: Clock
    send: Callable[[Sequence[Message]], None]
    audit: AuditSink
    lock: Callable[[str, float], AbstractContextManager[Lease | None]]


@dataclass(frozen=True)
class SegmentAgent:
    agent_id: str
    status: str
    pending: int
    healthy: bool


# ---------------------------------------------------------------- inputs


def segments(sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    """(segment, fleet) of every segment with an agent that is not retired or failed."""
    with sessions() as s:
        rows = s.execute(
            select(Agent.id_prefix, Agent.fleet)
            .where(Agent.status.in_([*SIZED, AgentStatus.RETIRING, AgentStatus.PAUSED]))
            .distinct()
            .order_by(Agent.id_prefix)
        )
        return [(str(p), str(f)) for p, f in rows]


def agent_index(agent_id: str) -> int:
    """The index in ``{id_prefix}-{index:04d}-{8 hex}``."""
    try:
        return int(agent_id.rsplit("-", 2)[1])
    except (IndexError, ValueError):
        return 0


def segment_agents(deps: ScalingDeps, segment: str) -> list[SegmentAgent]:
    with deps.sessions() as s:
        rows = [
            (str(a), str(st))
            for a, st in s.execute(
                select(Agent.agent_id, Agent.status).where(
                    Agent.id_prefix == segment, Agent.status.in_([*SIZED, *LOADED])
                )
            )
        ]
    ids = [a for a, _ in rows]
    counts = deps.redis.mget([inflight_key(a) for a in ids]) if ids else []
    fresh_after = deps.clock.now().timestamp() - deps.policy.scaling.snapshot_max_age_s
    out = []
    for (agent_id, status), raw in zip(rows, counts, strict=True):
        healthy = False
        if status == AgentStatus.ACTIVE:
            snap = read_snapshot(deps.redis, agent_id)
            healthy = (
                snap is not None and snap.health == Health.HEALTHY and snap.polled_at >= fresh_after
            )
        out.append(SegmentAgent(agent_id, str(status), max(int(raw or 0), 0), healthy))
    return out


def fleet_burn(deps: ScalingDeps, fleet: str, now: datetime) -> tuple[Decimal, Decimal]:
    """The fleet's spend since the start of its UTC day (the ledger), and its fleet-day limit."""
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    spent = Decimal(totals(deps.sessions, fleet=fleet, since=midnight)["actual"])
    limit = deps.policy.budgets.fleet_day
    with deps.sessions() as s:
        raised = s.get(BudgetLimit, f"fleet_day:{fleet}")
        if raised is not None:
            limit = Decimal(raised.limit)
    return spent, limit


def gather(deps: ScalingDeps, segment: str, fleet: str, state: SegmentScaling) -> Inputs:
    now = deps.clock.now()
    agents = segment_agents(deps, segment)
    burn, limit = fleet_burn(deps, fleet, now)
    return Inputs(
        segment=segment,
        pending=sum(a.pending for a in agents if a.status in LOADED),
        healthy=sum(1 for a in agents if a.healthy),
        size=sum(1 for a in agents if a.status in SIZED),
        burn=burn,
        burn_limit=limit,
        now=now,
        cooldown_until=_aware(state.cooldown_until),
    )


def _aware(when: datetime | None) -> datetime | None:
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


# ---------------------------------------------------------------- the pass


def state_of(s: Session, segment: str, fleet: str) -> SegmentScaling:
    state = s.get(SegmentScaling, segment)
    if state is None:
        state = SegmentScaling(segment=segment, fleet=fleet, mode=Mode.OBSERVE)
        s.add(state)
        s.flush()
    return state


def evaluate(deps: ScalingDeps) -> list[dict[str, Any]]:
    """One pass over every segment; returns the decisions as logged. None run twice at once."""
    with deps.lock("scaling:evaluate", 120) as lease:
        if lease is None:
            return []
        return [
            evaluate_segment(deps, segment, fleet) for segment, fleet in segments(deps.sessions)
        ]


def evaluate_segment(deps: ScalingDeps, segment: str, fleet: str) -> dict[str, Any]:
    with write_session(deps.sessions) as s:
        state = state_of(s, segment, fleet)
        mode = Mode(state.mode)
        s.expunge(state)
    decision = decide(deps.policy.scaling, gather(deps, segment, fleet, state))
    now = deps.clock.now()
    decision_id = uuid.uuid4().hex
    acted: dict[str, Any] = {}
    messages: list[Message] = []
    if decision.action is not Action.HOLD:
        if mode is Mode.ENFORCE:
            acted, messages = _plan_action(deps, segment, decision, decision_id)
        else:
            acted = {"observe": "decided and logged; nothing done"}
    row = ScalingDecision(
        decision_id=decision_id,
        segment=segment,
        fleet=fleet,
        mode=mode,
        action=decision.action,
        count=decision.count,
        reason=decision.reason,
        inputs=decision.inputs,
        acted=acted,
        decided_at=now,
    )
    with write_session(deps.sessions) as s:
        s.add(row)
        current = state_of(s, segment, fleet)
        current.last_decision_id = decision_id
        if decision.action is not Action.HOLD:
            current.last_action = decision.action
            current.last_action_at = now
            current.cooldown_until = now + timedelta(seconds=deps.policy.scaling.cooldown_s)
    # Logged first, sent after: a message names a decision that exists.
    if messages:
        deps.send(messages)
    if decision.action is not Action.HOLD:
        deps.audit(
            actor=ACTOR,
            action=f"autoscale_{decision.action}",
            subject=segment,
            details={
                "decision_id": decision_id,
                "mode": str(mode),
                "count": str(decision.count),
                "reason": decision.reason,
                "inputs": {k: str(v) for k, v in decision.inputs.items()},
                "acted": {k: str(v) for k, v in acted.items()},
            },
        )
    log.info(
        "autoscaler %s (%s): %s %d (%s)",
        segment,
        mode,
        decision.action,
        decision.count,
        decision.reason,
    )
    return decision_view(row)


def _plan_action(
    deps: ScalingDeps, segment: str, decision: Decision, decision_id: str
) -> tuple[dict[str, Any], list[Message]]:
    if decision.action is Action.SCALE_UP:
        kwargs = {"segment": segment, "count": decision.count, "decision_id": decision_id}
        return {"provision": decision.count, "job_id": job_id_for(decision_id)}, [
            (SCALE_UP_TASK, kwargs)
        ]
    chosen = least_useful(segment_agents(deps, segment), decision.count)
    return {"retire": chosen}, [
        (RETIRE_TASK, {"agent_id": a, "decision_id": decision_id}) for a in chosen
    ]


def least_useful(agents: Sequence[SegmentAgent], count: int) -> list[str]:
    """The active agents to retire first: unhealthy before healthy, then the fewest
    tasks in flight (the shortest drain), then the newest (highest index)."""
    active = [a for a in agents if a.status == AgentStatus.ACTIVE]
    active.sort(key=lambda a: (a.healthy, a.pending, -agent_index(a.agent_id)))
    return [a.agent_id for a in active[:count]]


def job_id_for(decision_id: str) -> str:
    return f"autoscale-{decision_id}"


# ---------------------------------------------------------------- acting (provisioning queue)


def _decision(deps: ScalingDeps, decision_id: str) -> ScalingDecision:
    with deps.sessions() as s:
        row = s.scalar(select(ScalingDecision).where(ScalingDecision.decision_id == decision_id))
        if row is None:
            raise ScalingError(f"no scaling decision {decision_id!r}")
        s.expunge(row)
        return row


def scale_up(
    deps: ScalingDeps, pdeps: ProvisioningDeps, segment: str, count: int, decision_id: str
) -> JobSubmission:
    """Add ``count`` agents to the segment from its manifest group, as the decision said."""
    row = _decision(deps, decision_id)
    if (
        row.segment != segment
        or row.action != Action.SCALE_UP
        or row.count != count
        or row.mode != Mode.ENFORCE
    ):
        raise ScalingError(
            f"decision {decision_id} is {row.mode} {row.action} {row.count} of {row.segment}, "
            f"not an enforced scale-up of {count} for {segment}"
        )
    with deps.sessions() as s:
        agents = list(s.scalars(select(Agent).where(Agent.id_prefix == segment)))
        source = max(
            (a for a in agents if isinstance(a.extra, dict) and "spec" in a.extra),
            key=lambda a: agent_index(a.agent_id),
            default=None,
        )
        if source is None:
            raise ScalingError(f"segment {segment!r} has no agent made from a manifest")
        spec = dict(source.extra["spec"])
        top = max(agent_index(a.agent_id) for a in agents)
    group = AgentGroup.model_validate(spec["group"])
    submission = add_agents(
        pdeps,
        fleet=str(spec["fleet"]),
        environment=str(spec["environment"]),
        group=group,
        indices=list(range(top + 1, top + 1 + count)),
        job_id=job_id_for(decision_id),
        submitted_by=ACTOR,
    )
    deps.audit(
        actor=ACTOR,
        action="autoscale_provision",
        subject=segment,
        details={
            "decision_id": decision_id,
            "job_id": submission.job_id,
            "from_job": str(spec.get("job_id")),
            "agents": ",".join(submission.to_dispatch),
        },
    )
    return submission


def retirement_reason(deps: ScalingDeps, agent_id: str, decision_id: str) -> str:
    """Why the autoscaler may retire ``agent_id``: raises unless an enforced scale-down
    decision chose exactly it (the segment's enforce approval is the human oversight)."""
    row = _decision(deps, decision_id)
    chosen = row.acted.get("retire", []) if isinstance(row.acted, dict) else []
    if (
        row.action not in (Action.SCALE_DOWN, Action.COST_SCALE_DOWN)
        or row.mode != Mode.ENFORCE
        or agent_id not in chosen
    ):
        raise ScalingError(
            f"decision {decision_id} ({row.mode} {row.action}) did not choose {agent_id} to retire"
        )
    return f"autoscaler {row.action} ({decision_id}): {row.reason}"


# ---------------------------------------------------------------- reading


def decision_view(row: ScalingDecision) -> dict[str, Any]:
    return {
        "decision_id": row.decision_id,
        "segment": row.segment,
        "fleet": row.fleet,
        "mode": row.mode,
        "action": row.action,
        "count": row.count,
        "reason": row.reason,
        "inputs": row.inputs,
        "acted": row.acted,
        "decided_at": _iso(row.decided_at),
    }


def _iso(when: datetime | None) -> str | None:
    aware = _aware(when)
    return aware.isoformat() if aware is not None else None


def decisions(
    sessions: sessionmaker[Session], *, segment: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The latest decisions, newest first."""
    stmt = select(ScalingDecision).order_by(desc(ScalingDecision.seq)).limit(limit)
    if segment is not None:
        stmt = stmt.where(ScalingDecision.segment == segment)
    with sessions() as s:
        return [decision_view(r) for r in s.scalars(stmt)]


def segment_views(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    """Every segment known to the autoscaler or holding agents: mode, last action, cooldown."""
    with sessions() as s:
        states = {r.segment: r for r in s.scalars(select(SegmentScaling))}
    out = []
    known = dict(segments(sessions))
    for segment in sorted(set(states) | set(known)):
        st = states.get(segment)
        out.append(
            {
                "segment": segment,
                "fleet": st.fleet if st else known[segment],
                "mode": st.mode if st else Mode.OBSERVE,
                "mode_changed_by": st.mode_changed_by if st else None,
                "mode_approval_id": st.mode_approval_id if st else None,
                "last_action": st.last_action if st else None,
                "last_action_at": _iso(st.last_action_at) if st else None,
                "cooldown_until": _iso(st.cooldown_until) if st else None,
                "last_decision_id": st.last_decision_id if st else None,
            }
        )
    return out
