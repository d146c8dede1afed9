"""What each tier does, run by a worker on that tier's queue, at most once per episode.

=====  =====================================================================
tier   action
=====  =====================================================================
1      remediate: POST the episode to ``escalation.remediation_webhook`` (the
       agent platform restarts, clears caches, checks dependencies); the
       answer is recorded
2      reroute: cut the agent's ``agents.traffic_weight`` (the routing table,
       :mod:`fleet.routing`) by ``traffic_cut_fraction``; the weight before is
       kept on the episode and restored when it closes
3      notify the operator (``send_message`` from the admin's agent to the
       operator's, type ``text``, with the AI disclosure of Art. 13) and,
       when the episode names a counterparty with which the agent holds an
       escrow that is still ``held``, open a dispute on that escrow as the
       agent (pro key): the gateway models disputes only through escrows
4      freeze: pause the agent (out of every routing pool), freeze its wallet
       at the gateway (admin), open the human approval request that
       releases it, tell the operator
0      recovery (after the episode closed): resolved notice; disputes resolved
       by the admin key as the ``disputes`` policy says (refund or release)
=====  =====================================================================

A worker first claims the (episode, tier) row with a conditional update:
``dispatched`` → ``running`` with a lease. A second delivery of the message
finds the row ``done`` (and does nothing), or ``running`` under a live lease
(and comes back when the lease would have run out). Each step of an action is
recorded when it finishes, so an action retried after a transient failure,
or taken over from a dead worker, resumes after its last finished step.
Every action goes through the approval gate under its matrix name; one the
policy rates HIGH waits (``held``) until a human approves it, and then runs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, cast

import httpx
from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy
from fleet import audit
from fleet.approvals import Approvals, Gate, NotApproved, with_ai_disclosure
from fleet.approvals.gate import Held, clear
from fleet.approvals.models import ApprovalRequest, RequestStatus
from fleet.approvals.release import ACTION as RELEASE_ACTION
from fleet.approvals.release import request_release
from fleet.audit.events import ApprovalState, Article
from fleet.clock import Clock
from fleet.escalation.engine import TIER_TASKS
from fleet.gateway import Auth, Gateway, GatewayError, NotFound, RateLimited, Unavailable
from fleet.gateway import operations as ops
from fleet.gateway.errors import Conflict
from fleet.sla.episodes import EpisodeView, view
from fleet.sla.models import (
    RESOLVE_TIER,
    ActionStatus,
    DisputeStatus,
    EpisodeState,
    SlaDispute,
    SlaEpisode,
    SlaEscalation,
)
from fleet.storage import wallets
from fleet.storage.db import write_session
from fleet.storage.records import Agent, AgentStatus

log = logging.getLogger(__name__)

ACTOR = "fleet-commander/escalation"

# The approval matrix's name for what each tier does.
GATED_ACTION = {1: "restart_agent", 2: "reroute_traffic", 3: "notify_operator", 4: "freeze_agent"}
DISPUTE_ACTION = "open_dispute"
RESOLVE_DISPUTE_ACTION = "resolve_dispute"
CENT = Decimal("0.01")
WEIGHT_STEP = Decimal("0.0001")


@dataclass
class ActionDeps:
    sessions: sessionmaker[Session]
    policy: Policy
    clock: Clock
    gateway: Gateway
    http: httpx.Client
    approvals: Approvals
    record: Callable[..., Any] = audit.record
    # settings.gateway: notices go from the admin key's agent to the operator's inbox.
    admin_agent_id: str = "fleet-admin"
    operator_agent_id: str = "fleet-operator"
    # The kill switch (fleet.control.LoopState): a reason while the control loop is paused.
    paused: Callable[[], str | None] = lambda: None


@dataclass(frozen=True)
class Outcome:
    status: str  # done, failed, skipped, held, duplicate, busy, missing, retry
    tier: int
    episode_id: str
    result: dict[str, Any] = field(default_factory=dict)
    retry_in: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "tier": self.tier,
            "episode_id": self.episode_id,
            "result": self.result,
        }


class _Held(Exception):
    def __init__(self, request_id: str | None) -> None:
        super().__init__(request_id)
        self.request_id = request_id


class _Wait(Exception):
    """Not yet: release the claim and come back, without spending an attempt."""


class _Transient(Exception):
    """Worth another attempt (the webhook timed out or answered 5xx)."""


# ------------------------------------------------------------------------------ claiming


@dataclass
class _Claim:
    steps: dict[str, Any]
    attempts: int


def _claim(
    deps: ActionDeps,
    episode_id: str,
    tier: int,
    worker: str,
    queue: str | None,
    approval_id: str | None,
    now: datetime,
) -> _Claim | Outcome:
    lease = now + timedelta(seconds=deps.policy.escalation.action_lease_s)
    claimable = [
        SlaEscalation.status == ActionStatus.DISPATCHED,
        (SlaEscalation.status == ActionStatus.RUNNING) & (SlaEscalation.lease_until < now),
    ]
    if approval_id is not None:
        claimable.append(SlaEscalation.status == ActionStatus.HELD)
    with write_session(deps.sessions) as s:
        claimed = cast(
            CursorResult[Any],
            s.execute(
                update(SlaEscalation)
                .where(
                    SlaEscalation.episode_id == episode_id,
                    SlaEscalation.tier == tier,
                    or_(*claimable),
                )
                .values(
                    status=ActionStatus.RUNNING,
                    claimed_by=worker[:160],
                    lease_until=lease,
                    attempts=SlaEscalation.attempts + 1,
                    queue=queue,
                    started_at=now,
                )
                .execution_options(synchronize_session=False)
            ),
        ).rowcount
        row = s.get(SlaEscalation, (episode_id, tier))
        if row is None:
            return Outcome("missing", tier, episode_id)
        s.refresh(row)
        if claimed == 1:
            return _Claim(dict(row.steps or {}), row.attempts)
        status = ActionStatus(row.status)
        if status.finished:
            return Outcome("duplicate", tier, episode_id, {"already": status.value})
        if status is ActionStatus.HELD:
            return Outcome("held", tier, episode_id, {"approval_id": row.approval_id})
        wait = max(1.0, ((row.lease_until or now) - now).total_seconds() + 1.0)
        return Outcome("busy", tier, episode_id, {"claimed_by": row.claimed_by}, retry_in=wait)


def _finish(
    deps: ActionDeps,
    episode_id: str,
    tier: int,
    worker: str,
    status: ActionStatus,
    result: dict[str, Any],
    error: str | None = None,
    approval_id: str | None = None,
) -> None:
    values: dict[str, Any] = {
        "status": status,
        "result": result,
        "error": error,
        "lease_until": None,
        "finished_at": deps.clock.now() if status.finished else None,
    }
    if status is ActionStatus.DISPATCHED:
        values["started_at"] = None
    if approval_id is not None:
        values["approval_id"] = approval_id
    with write_session(deps.sessions) as s:
        s.execute(
            update(SlaEscalation)
            .where(
                SlaEscalation.episode_id == episode_id,
                SlaEscalation.tier == tier,
                SlaEscalation.claimed_by == worker[:160],
                SlaEscalation.status == ActionStatus.RUNNING,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )


def _release_wait(deps: ActionDeps, episode_id: str, tier: int, worker: str) -> None:
    with write_session(deps.sessions) as s:
        s.execute(
            update(SlaEscalation)
            .where(
                SlaEscalation.episode_id == episode_id,
                SlaEscalation.tier == tier,
                SlaEscalation.claimed_by == worker[:160],
                SlaEscalation.status == ActionStatus.RUNNING,
            )
            .values(
                status=ActionStatus.DISPATCHED,
                lease_until=None,
                attempts=SlaEscalation.attempts - 1,
            )
            .execution_options(synchronize_session=False)
        )


class _Steps:
    """The action's finished steps, each saved as soon as it is done."""

    def __init__(
        self, deps: ActionDeps, episode_id: str, tier: int, worker: str, done: dict[str, Any]
    ) -> None:
        self.deps, self.episode_id, self.tier, self.worker, self.done = (
            deps,
            episode_id,
            tier,
            worker,
            done,
        )

    def do(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if name in self.done:
            return dict(self.done[name])
        value = fn()
        self.done[name] = value
        with write_session(self.deps.sessions) as s:
            s.execute(
                update(SlaEscalation)
                .where(
                    SlaEscalation.episode_id == self.episode_id,
                    SlaEscalation.tier == self.tier,
                    SlaEscalation.claimed_by == self.worker[:160],
                )
                .values(steps=dict(self.done))
                .execution_options(synchronize_session=False)
            )
        return value


# ------------------------------------------------------------------------------ the entry point


@dataclass(frozen=True)
class _Context:
    episode: EpisodeView
    agent_status: str | None
    fleet: str


def run_action(
    deps: ActionDeps,
    episode_id: str,
    tier: int,
    *,
    worker: str,
    queue: str | None = None,
    approval_id: str | None = None,
) -> Outcome:
    """Claim and run one tier's action for one episode (see the module docstring)."""
    paused = deps.paused()
    if paused is not None:
        # Nothing claimed, no attempt spent: the action runs once the loop is resumed.
        log.info("episode %s tier %d waits: %s", episode_id, tier, paused)
        return Outcome(
            "retry", tier, episode_id, {"waiting": paused}, retry_in=deps.policy.control.recheck_s
        )
    claim = _claim(deps, episode_id, tier, worker, queue, approval_id, deps.clock.now())
    if isinstance(claim, Outcome):
        if claim.status in ("duplicate", "missing", "held"):
            log.info("episode %s tier %d: %s, nothing to do", episode_id, tier, claim.status)
        return claim
    ctx = _context(deps, episode_id)
    steps = _Steps(deps, episode_id, tier, worker, claim.steps)
    esc = deps.policy.escalation
    try:
        if tier != RESOLVE_TIER and not ctx.episode.is_open and not claim.steps:
            result: dict[str, Any] = {
                "skipped": f"episode closed ({ctx.episode.close_reason}) before tier {tier} ran"
            }
            _finish(deps, episode_id, tier, worker, ActionStatus.SKIPPED, result)
            return Outcome(ActionStatus.SKIPPED.value, tier, episode_id, result)
        result, approval = _HANDLERS[tier](deps, ctx, steps, approval_id)
    except _Held as held:
        _finish(
            deps,
            episode_id,
            tier,
            worker,
            ActionStatus.HELD,
            {"held": "waiting for a human approval", "approval_id": held.request_id},
            approval_id=held.request_id,
        )
        return Outcome(ActionStatus.HELD.value, tier, episode_id, {"approval_id": held.request_id})
    except _Wait as wait:
        _release_wait(deps, episode_id, tier, worker)
        return Outcome(
            "retry", tier, episode_id, {"waiting": str(wait)}, retry_in=esc.action_retry_s
        )
    except (_Transient, Unavailable, RateLimited, httpx.TransportError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        if claim.attempts < esc.action_max_attempts:
            _finish(deps, episode_id, tier, worker, ActionStatus.DISPATCHED, {}, error=error)
            retry_in = max(esc.action_retry_s, getattr(exc, "retry_after", None) or 0.0)
            return Outcome("retry", tier, episode_id, {"error": error}, retry_in=retry_in)
        return _failed(
            deps, ctx, tier, worker, steps, f"gave up after {claim.attempts} attempts: {error}"
        )
    except (GatewayError, NotApproved) as exc:
        return _failed(deps, ctx, tier, worker, steps, f"{type(exc).__name__}: {exc}")
    ok: object = result.get("ok")
    status = ActionStatus.FAILED if ok is False else ActionStatus.DONE
    _finish(deps, episode_id, tier, worker, status, result)
    _audit_action(deps, ctx, tier, status, result, approval)
    return Outcome(status.value, tier, episode_id, result)


def _failed(
    deps: ActionDeps, ctx: _Context, tier: int, worker: str, steps: _Steps, error: str
) -> Outcome:
    result = {"ok": False, "error": error[:1000], "steps_done": sorted(steps.done)}
    _finish(
        deps, ctx.episode.episode_id, tier, worker, ActionStatus.FAILED, result, error=error[:4000]
    )
    _audit_action(deps, ctx, tier, ActionStatus.FAILED, result, _Approval())
    log.warning("episode %s tier %d failed: %s", ctx.episode.episode_id, tier, error)
    return Outcome(ActionStatus.FAILED.value, tier, ctx.episode.episode_id, result)


def _context(deps: ActionDeps, episode_id: str) -> _Context:
    with deps.sessions() as s:
        ep = s.get(SlaEpisode, episode_id)
        assert ep is not None  # the escalation row references it
        agent = s.get(Agent, ep.agent_id)
        return _Context(view(ep), str(agent.status) if agent else None, ep.fleet)


# ------------------------------------------------------------------------------ the approval gate


@dataclass(frozen=True)
class _Approval:
    state: ApprovalState = ApprovalState.NONE
    request_id: str | None = None


def _gate(
    deps: ActionDeps, ctx: _Context, steps: _Steps, action: str, tier: int, approval_id: str | None
) -> _Approval:
    """Ask the approval gate once per action; HIGH/CRITICAL raise _Held until a human approves."""
    key = f"gate:{action}"
    held = steps.done.get(f"held:{action}", {}).get("request_id")
    if key not in steps.done:
        if held is not None and approval_id != held:
            raise _Held(held)  # still waiting for this action's own approval
        ep = ctx.episode

        def ask() -> Gate:
            return deps.approvals.request(
                action,
                ep.agent_id,
                ACTOR,
                fleet=ctx.fleet,
                details={
                    "episode_id": ep.episode_id,
                    "tier": tier,
                    "breached_terms": list(ep.breached_terms),
                },
                reason=f"SLA violation episode {ep.episode_id} reached tier {tier}",
                task=TIER_TASKS[tier],
                task_kwargs={"episode_id": ep.episode_id, "tier": tier},
            )

        try:
            # Only the approval this action is held on is claimed here; another id is ignored.
            passed = clear(
                deps.approvals,
                action=action,
                subject=ep.agent_id,
                approval_id=held and approval_id,
                ask=ask,
            )
        except NotApproved:
            raise _Held(held) from None
        if isinstance(passed, Held):
            steps.do(f"held:{action}", lambda: {"request_id": passed.request_id})
            raise _Held(passed.request_id)
        risk = "approved" if passed.gate is None else passed.gate.risk.value
        steps.do(key, lambda: {"risk": risk, "may_run": True, "request_id": passed.request_id})
    decided = steps.done[key]
    if decided["risk"] == "approved":
        return _Approval(ApprovalState.APPROVED, decided["request_id"])
    if decided["request_id"]:
        return _Approval(ApprovalState.REVIEW_PENDING, decided["request_id"])
    return _Approval()


# ------------------------------------------------------------------------------ the tiers


def _remediate(
    deps: ActionDeps, ctx: _Context, steps: _Steps, approval_id: str | None
) -> tuple[dict[str, Any], _Approval]:
    approval = _gate(deps, ctx, steps, GATED_ACTION[1], 1, approval_id)
    hook = deps.policy.escalation.remediation_webhook
    if not hook:
        return {
            "remediation": "not configured",
            "note": "escalation.remediation_webhook is not set",
        }, approval
    ep = ctx.episode

    def call() -> dict[str, Any]:
        payload = {
            "episode_id": ep.episode_id,
            "agent_id": ep.agent_id,
            "fleet": ctx.fleet,
            "breached_terms": list(ep.breached_terms),
            "opened_at": ep.opened_at.isoformat(),
            "requested": ["restart", "clear_cache", "check_dependencies"],
        }
        response = deps.http.post(
            hook,
            json=payload,
            timeout=deps.policy.escalation.remediation_timeout_s,
            headers={"Idempotency-Key": f"{ep.episode_id}-1"},
        )
        if response.status_code >= 500 or response.status_code == 429:
            raise _Transient(f"webhook answered {response.status_code}")
        return {
            "webhook_status": response.status_code,
            "ok": response.is_success,
            "body": response.text[:500],
        }

    return steps.do("webhook", call), approval


def _reroute(
    deps: ActionDeps, ctx: _Context, steps: _Steps, approval_id: str | None
) -> tuple[dict[str, Any], _Approval]:
    approval = _gate(deps, ctx, steps, GATED_ACTION[2], 2, approval_id)
    fraction = Decimal(str(deps.policy.escalation.traffic_cut_fraction))

    def cut() -> dict[str, Any]:
        now = deps.clock.now()
        with write_session(deps.sessions) as s:
            ep = s.scalars(
                select(SlaEpisode)
                .where(SlaEpisode.episode_id == ctx.episode.episode_id)
                .with_for_update()
            ).one()
            agent = s.scalars(
                select(Agent).where(Agent.agent_id == ep.agent_id).with_for_update()
            ).first()
            if ep.state != EpisodeState.OPEN or agent is None:
                return {"cut": False, "reason": "episode closed before the cut"}
            if ep.weight_before is not None:  # cut already (a retry after the commit)
                return {"cut": True, "before": ep.weight_before, "after": agent.traffic_weight}
            before = Decimal(agent.traffic_weight or "1")
            after = (before * (1 - fraction)).quantize(WEIGHT_STEP, ROUND_HALF_UP).normalize()
            ep.weight_before = agent.traffic_weight
            agent.traffic_weight = format(after, "f")
            agent.updated_at = now
            return {
                "cut": True,
                "before": ep.weight_before,
                "after": agent.traffic_weight,
                "fraction": format(fraction, "f"),
            }

    return steps.do("cut", cut), approval


def _notify(
    deps: ActionDeps, ctx: _Context, steps: _Steps, approval_id: str | None
) -> tuple[dict[str, Any], _Approval]:
    approval = _gate(deps, ctx, steps, GATED_ACTION[3], 3, approval_id)
    ep, esc = ctx.episode, deps.policy.escalation
    minutes = int(ep.duration_s(deps.clock.now()) // 60)
    body = (
        f"Agent {ep.agent_id} of fleet {ctx.fleet} has been in breach of its SLA for {minutes} min "
        f"(terms: {', '.join(ep.breached_terms)}; episode {ep.episode_id}, "
        f"opened {ep.opened_at:%Y-%m-%d %H:%M} UTC). "
        f"Tiers 1-2 have run. Acknowledge with `fleet sla ack {ep.episode_id} --by NAME` "
        f"to hold the freeze for {int(esc.ack_timeout_s // 60)} min."
    )
    message = steps.do(
        "message",
        lambda: _message(
            deps, ctx, f"SLA breach: {ep.agent_id} (tier 3)", body, esc.notify_priority
        ),
    )
    result: dict[str, Any] = {"message_id": message["message_id"], "to": deps.operator_agent_id}
    if ep.counterparty:
        escrow = steps.do("escrow", lambda: _held_escrow(deps, ctx))
        if escrow.get("escrow_id") is None:
            result["dispute"] = escrow["note"]
            return result, approval
        _gate(deps, ctx, steps, DISPUTE_ACTION, 3, approval_id)
        dispute = steps.do("dispute", lambda: _open_dispute(deps, ctx, escrow))
        result["dispute_id"] = dispute["dispute_id"]
        if deps.policy.disputes.resolve_on == "open":
            result["dispute_resolution"] = steps.do(
                "dispute_resolution", lambda: _resolve_dispute(deps, ctx, dispute["dispute_id"])
            )
    return result, approval


def _freeze(
    deps: ActionDeps, ctx: _Context, steps: _Steps, approval_id: str | None
) -> tuple[dict[str, Any], _Approval]:
    approval = _gate(deps, ctx, steps, GATED_ACTION[4], 4, approval_id)
    ep = ctx.episode
    reason = f"SLA violation episode {ep.episode_id}: tier 4 freeze"

    def pause() -> dict[str, Any]:
        with write_session(deps.sessions) as s:
            agent = s.scalars(
                select(Agent).where(Agent.agent_id == ep.agent_id).with_for_update()
            ).first()
            if agent is None:
                return {"paused": False, "reason": "agent unknown"}
            before = str(agent.status)
            if agent.status == AgentStatus.ACTIVE:
                agent.status = AgentStatus.PAUSED
                agent.updated_at = deps.clock.now()
            return {"paused": agent.status == AgentStatus.PAUSED, "status_before": before}

    def freeze_wallet() -> dict[str, Any]:
        try:
            out = deps.gateway.run(ops.freeze_wallet(ep.agent_id))
            wallets.note(
                deps.sessions, [ep.agent_id], frozen=out.frozen, by=ACTOR, at=deps.clock.now()
            )
            return {"frozen": out.frozen, "wallet_id": out.agent_id}
        except NotFound:
            return {"frozen": False, "note": "no wallet"}

    def release_request() -> dict[str, Any]:
        pending = _pending_release(deps, ep.agent_id)
        if pending is not None:
            return {"request_id": pending, "note": "a release request was already pending"}
        gate = request_release(deps.approvals, ep.agent_id, ACTOR, reason=reason, fleet=ctx.fleet)
        return {"request_id": gate.request_id, "risk": gate.risk.value, "may_run": gate.may_run}

    paused = steps.do("pause", pause)
    wallet = steps.do("wallet", freeze_wallet)
    release = steps.do("release_request", release_request)
    body = (
        f"Agent {ep.agent_id} of fleet {ctx.fleet} has been paused and its wallet frozen after "
        f"{int(ep.duration_s(deps.clock.now()) // 60)} min in breach of its SLA "
        f"(episode {ep.episode_id}). "
        f"It stays frozen until a human approves release request {release.get('request_id')} "
        f"(`fleet approvals approve {release.get('request_id')} --by NAME`)."
    )
    message = steps.do(
        "message",
        lambda: _message(deps, ctx, f"SLA breach: {ep.agent_id} frozen (tier 4)", body, "urgent"),
    )
    return {
        "paused": paused["paused"],
        "wallet_frozen": wallet["frozen"],
        "release_request": release.get("request_id"),
        "message_id": message["message_id"],
    }, approval


def _resolve(
    deps: ActionDeps, ctx: _Context, steps: _Steps, approval_id: str | None
) -> tuple[dict[str, Any], _Approval]:
    ep = ctx.episode
    with deps.sessions() as s:
        tier3 = s.get(SlaEscalation, (ep.episode_id, 3))
        if (
            tier3 is not None
            and not ActionStatus(tier3.status).finished
            and tier3.status != ActionStatus.HELD
        ):
            raise _Wait("tier 3 of this episode has not finished")
        open_disputes = [
            d.dispute_id
            for d in s.scalars(
                select(SlaDispute).where(
                    SlaDispute.episode_id == ep.episode_id, SlaDispute.status == DisputeStatus.OPEN
                )
            )
        ]
    minutes = int(ep.duration_s(deps.clock.now()) // 60)
    frozen = ctx.agent_status == AgentStatus.PAUSED
    body = (
        f"Agent {ep.agent_id} of fleet {ctx.fleet} is within its SLA again: "
        f"episode {ep.episode_id} "
        f"({', '.join(ep.breached_terms)}) lasted {minutes} min and is closed ({ep.close_reason}). "
        + ("Its traffic weight is restored. " if ep.weight_before is not None else "")
        + (
            "It stays paused with its wallet frozen until a human approves its release."
            if frozen
            else ""
        )
    )
    message = steps.do(
        "notice",
        lambda: _message(deps, ctx, f"SLA resolved: {ep.agent_id}", body.strip(), "normal"),
    )
    resolved = {
        d: steps.do(f"resolve:{d}", functools.partial(_resolve_dispute, deps, ctx, d))
        for d in open_disputes
    }
    return {"message_id": message["message_id"], "disputes_resolved": sorted(resolved)}, _Approval()


_HANDLERS: dict[
    int, Callable[[ActionDeps, _Context, _Steps, str | None], tuple[dict[str, Any], _Approval]]
] = {
    RESOLVE_TIER: _resolve,
    1: _remediate,
    2: _reroute,
    3: _notify,
    4: _freeze,
}


# ------------------------------------------------------------------------------ pieces


def _message(
    deps: ActionDeps, ctx: _Context, subject: str, body: str, priority: str
) -> dict[str, Any]:
    text = with_ai_disclosure(
        body,
        agent_id=ctx.episode.agent_id,
        fleet=ctx.fleet,
        template=deps.policy.transparency.ai_disclosure,
    )
    out = deps.gateway.run(
        ops.send_message(
            deps.admin_agent_id,
            deps.operator_agent_id,
            "text",
            subject,
            text,
            metadata={"priority": priority, "episode_id": ctx.episode.episode_id},
            auth=Auth.ADMIN,
        )
    )
    return {"message_id": out.id}


def _held_escrow(deps: ActionDeps, ctx: _Context) -> dict[str, Any]:
    """The escrow between the agent and the episode's counterparty, if it is still
    held: the gateway opens disputes on escrows only. Whoever made the escrow
    recorded it on the agent (``extra.escrows``: counterparty → escrow id)."""
    ep = ctx.episode
    with deps.sessions() as s:
        agent = s.get(Agent, ep.agent_id)
        escrow_id = ((agent.extra if agent else {}) or {}).get("escrows", {}).get(ep.counterparty)
    if not escrow_id:
        return {"note": f"no dispute: no escrow with {ep.counterparty} is recorded for the agent"}
    try:
        escrow = deps.gateway.run(ops.get_escrow(escrow_id))
    except NotFound:
        return {"note": f"no dispute: escrow {escrow_id} is unknown at the gateway"}
    if escrow.status != "held":
        return {"note": f"no dispute: escrow {escrow_id} is {escrow.status}, not held"}
    return {"escrow_id": escrow_id, "amount": format(escrow.amount.quantize(CENT), "f")}


def _open_dispute(deps: ActionDeps, ctx: _Context, escrow: dict[str, Any]) -> dict[str, Any]:
    ep = ctx.episode
    assert ep.counterparty is not None
    claimed = Decimal(escrow["amount"])
    details = {
        "episode_id": ep.episode_id,
        "breached_terms": list(ep.breached_terms),
        "opened_at": ep.opened_at.isoformat(),
        "claimed": format(claimed, "f"),
        "escrow_id": escrow["escrow_id"],
    }
    reason = with_ai_disclosure(
        f"SLA breach ({', '.join(ep.breached_terms)}), episode {ep.episode_id}",
        agent_id=ep.agent_id,
        fleet=ctx.fleet,
        template=deps.policy.transparency.ai_disclosure,
    )
    # As the agent itself (its own key, pro): it is a party to the escrow.
    out = deps.gateway.run(ops.open_dispute(escrow["escrow_id"], ep.agent_id, reason))
    now = deps.clock.now()
    with write_session(deps.sessions) as s:
        if s.get(SlaDispute, out.id) is None:
            s.add(
                SlaDispute(
                    dispute_id=out.id,
                    episode_id=ep.episode_id,
                    agent_id=ep.agent_id,
                    counterparty=ep.counterparty,
                    claimed=format(claimed, "f"),
                    status=DisputeStatus.OPEN,
                    opened_at=now,
                )
            )
    deps.record(
        actor=ACTOR,
        action=DISPUTE_ACTION,
        subject=ep.agent_id,
        fleet=ctx.fleet,
        details={**details, "dispute_id": out.id, "counterparty": ep.counterparty},
        clock=deps.clock,
        event_id=f"dsp-open-{out.id}"[:64],
    )
    return {"dispute_id": out.id, "claimed": format(claimed, "f")}


def _resolve_dispute(deps: ActionDeps, ctx: _Context, dispute_id: str) -> dict[str, Any]:
    """Resolve by the disputes policy (the escrow refunded to its payer, or released to
    its payee) with the admin key; record and audit it."""
    policy, ep = deps.policy.disputes, ctx.episode
    with deps.sessions() as s:
        row = s.get(SlaDispute, dispute_id)
        claimed = Decimal(row.claimed) if row is not None else Decimal("0.00")
    refund = claimed if policy.resolution == "refund" else Decimal("0.00")
    minutes = int(ep.duration_s(deps.clock.now()) // 60)
    notes = (
        f"{policy.notes} Episode {ep.episode_id}: {', '.join(ep.breached_terms)} for {minutes} min."
    )
    try:
        deps.gateway.run(
            ops.resolve_dispute(dispute_id, policy.resolution, deps.admin_agent_id, notes),
            idempotency_key=f"dsp-res-{dispute_id}",
        )
        already = False
    except Conflict:
        already = True  # resolved by an earlier attempt whose answer was lost
    now = deps.clock.now()
    with write_session(deps.sessions) as s:
        row = s.get(SlaDispute, dispute_id)
        if row is not None and row.status == DisputeStatus.OPEN:
            row.status, row.resolved_at = DisputeStatus.RESOLVED, now
            row.resolution, row.refund, row.notes = policy.resolution, format(refund, "f"), notes
    deps.record(
        actor=ACTOR,
        action=RESOLVE_DISPUTE_ACTION,
        subject=ep.agent_id,
        fleet=ctx.fleet,
        details={
            "dispute_id": dispute_id,
            "episode_id": ep.episode_id,
            "resolution": policy.resolution,
            "claimed": format(claimed, "f"),
            "refund": format(refund, "f"),
            "notes": notes,
        },
        clock=deps.clock,
        event_id=f"dsp-res-{dispute_id}"[:64],
    )
    return {
        "resolution": policy.resolution,
        "refund": format(refund, "f"),
        "already_resolved": already,
    }


def _pending_release(deps: ActionDeps, agent_id: str) -> str | None:
    with deps.sessions() as s:
        return s.scalars(
            select(ApprovalRequest.request_id).where(
                ApprovalRequest.action == RELEASE_ACTION,
                ApprovalRequest.subject == agent_id,
                ApprovalRequest.status == RequestStatus.PENDING,
            )
        ).first()


_AUDIT_ACTION = {RESOLVE_TIER: "sla_resolved_notice", **GATED_ACTION}


def _audit_action(
    deps: ActionDeps,
    ctx: _Context,
    tier: int,
    status: ActionStatus,
    result: dict[str, Any],
    approval: _Approval,
) -> None:
    ep = ctx.episode
    deps.record(
        actor=ACTOR,
        action=_AUDIT_ACTION[tier],
        subject=ep.agent_id,
        fleet=ctx.fleet,
        details={
            "episode_id": ep.episode_id,
            "tier": tier,
            "status": status.value,
            "breached_terms": list(ep.breached_terms),
            "result": _no_floats(result),
        },
        article=Article.HUMAN_OVERSIGHT if tier == 4 else Article.RECORD_KEEPING,
        approval=approval.state,
        approval_id=approval.request_id,
        clock=deps.clock,
        # One entry per (episode, tier) however often the action is delivered.
        event_id=f"esc-{ep.episode_id}-t{tier}",
    )


def _no_floats(value: Any) -> Any:
    if isinstance(value, float):
        return format(Decimal(str(value)), "f")
    if isinstance(value, dict):
        return {k: _no_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_floats(v) for v in value]
    return value
