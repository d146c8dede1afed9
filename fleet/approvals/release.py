"""Releasing a frozen agent: itself an approval-gated action (``release_agent`` in the matrix).

Tier 4 pauses an agent and freezes its wallet, and requires a human to undo
it. :func:`request_release` opens the request; once approved, the task named
here runs :func:`release_agent`, which checks the approval, unfreezes the
wallet at the gateway (``unfreeze_wallet``, admin key), makes the agent
active again, and only then marks the approval used.
Both steps are idempotent, so a redelivered task finishes the job instead of
doing it twice.
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from fleet.approvals.gate import run_approved
from fleet.approvals.service import Approvals, Gate
from fleet.audit.events import ApprovalState, Article, build_event
from fleet.gateway import Gateway
from fleet.gateway import operations as ops
from fleet.gateway.errors import NotFound
from fleet.storage import wallets
from fleet.storage.records import Agent, AgentStatus

ACTION = "release_agent"
TASK = "audit.release_agent"


def request_release(
    approvals: Approvals, agent_id: str, requested_by: str, *, reason: str, fleet: str | None = None
) -> Gate:
    return approvals.request(
        ACTION,
        agent_id,
        requested_by,
        fleet=fleet,
        reason=reason,
        details={"agent_id": agent_id},
        task=TASK,
        task_kwargs={"agent_id": agent_id},
    )


def release_agent(
    approvals: Approvals,
    sessions: sessionmaker[Session],
    gateway: Gateway,
    *,
    request_id: str,
    agent_id: str,
) -> bool:
    """Unfreeze and reactivate the agent under an approval; False if someone else already did."""

    def unfreeze() -> str | None:
        # Unfreezing an unfrozen wallet is a no-op there; NotFound: no wallet, nothing to undo.
        had_wallet = True
        try:
            gateway.run(ops.unfreeze_wallet(agent_id))
        except NotFound:
            had_wallet = False
        with sessions.begin() as session:
            agent = session.get(Agent, agent_id)
            if agent is None:
                return None
            now = approvals.clock.now()
            if agent.status == AgentStatus.PAUSED:
                agent.status = AgentStatus.ACTIVE
                agent.updated_at = now
            if had_wallet:
                wallets.note_in(session, agent, frozen=False, by=approvals.actor, at=now)
            return agent.fleet

    fleet, view = run_approved(
        approvals, action=ACTION, subject=agent_id, approval_id=request_id, work=unfreeze
    )
    if view is None:
        return False  # a concurrent delivery finished first
    approvals.emit_audit(
        [
            build_event(
                actor=approvals.actor,
                action=ACTION,
                subject=agent_id,
                fleet=fleet or view.fleet,
                details={"request_id": request_id, "approvers": [v.approver for v in view.votes]},
                article=Article.HUMAN_OVERSIGHT,
                approval=ApprovalState.APPROVED,
                approval_id=request_id,
                clock=approvals.clock,
            )
        ]
    )
    return True
