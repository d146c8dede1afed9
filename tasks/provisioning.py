"""Tasks on the `provisioning` queue.

Public entry point for other systems — any Celery client, or anything that
writes Celery's message protocol (JSON) to Redis:

    task name:  provisioning.provision_fleet
    kwargs:     {"manifest": {<fleet manifest as JSON>}, "job_id": "<optional id>",
                 "submitted_by": "<optional who>"}

The job id defaults to the message's task id. Progress: GET
/api/v1/provisioning-jobs/{job_id}, `fleet provision --wait`, and Flower,
where each agent is its own `provisioning.provision_agent` task with the
agent id in its arguments.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from celery import Task
from celery.exceptions import Reject

from fleet.approvals import Approvals, NotApproved
from fleet.gateway import Unavailable
from fleet.hotstate import inflight
from fleet.provisioning import lifecycle, pipeline
from fleet.provisioning.manifest import ManifestError
from tasks import _deps
from tasks._base import heartbeat_task
from workers.app import app
from workers.queues import FleetQueue

log = logging.getLogger(__name__)

heartbeat = heartbeat_task(FleetQueue.PROVISIONING.value)

# Dispatching a thousand agents one message at a time costs ~1 s; sending
# them over one producer connection keeps that to a fraction.
_DISPATCH_CHUNK = 500


def dispatch_agents(job_id: str, agent_ids: list[str]) -> None:
    with app.producer_or_acquire() as producer:
        for agent_id in agent_ids:
            provision_agent.apply_async(args=(job_id, agent_id), producer=producer)


@app.task(name="provisioning.provision_fleet", bind=True, acks_late=True)
def provision_fleet(
    self: Task, manifest: Any, job_id: str | None = None, submitted_by: str = "celery"
) -> dict[str, Any]:
    job_id = job_id or self.request.id
    try:
        submission = pipeline.submit_job(_deps.provisioning(), manifest, job_id, submitted_by)
    except ManifestError as exc:
        # Bad input never retries: the job records every problem for whoever asks.
        raise Reject(f"invalid manifest: {exc}", requeue=False) from None
    except pipeline.ProvisioningFrozen as exc:
        raise Reject(str(exc), requeue=False) from None
    for chunk in pipeline.iter_chunks(submission.to_dispatch, _DISPATCH_CHUNK):
        dispatch_agents(job_id, chunk)
    return {
        "job_id": job_id,
        "total": submission.total,
        "dispatched": len(submission.to_dispatch),
        "already_active": submission.already_active,
    }


@app.task(name="provisioning.provision_agent", acks_late=True, ignore_result=True)
def provision_agent(job_id: str, agent_id: str) -> dict[str, Any]:
    status = pipeline.provision_agent(_deps.provisioning(), agent_id)
    return {
        "job_id": job_id,
        "agent_id": agent_id,
        "status": str(status) if status else "held-by-another-worker",
    }


@app.task(name="provisioning.resume_stalled", acks_late=True)
def resume_stalled(stall_s: float = 300.0) -> int:
    """Re-dispatch agents whose provisioning stopped moving (a worker died mid-step)."""
    deps = _deps.provisioning()
    stalled = pipeline.stalled_agents(deps.sessions, pipeline.stall_cutoff(deps.clock, stall_s))
    if stalled:
        log.info("re-dispatching %d stalled agents", len(stalled))
        dispatch_agents("resume", stalled)
    return len(stalled)


@app.task(name="provisioning.rotate_due_keys", acks_late=True)
def rotate_due_keys() -> int:
    """Beat: find agents whose key is older than the rotation period; one task each."""
    due = lifecycle.keys_due(_deps.provisioning())
    with app.producer_or_acquire() as producer:
        for agent_id in due:
            rotate_key.apply_async(args=(agent_id,), producer=producer)
    return len(due)


@app.task(
    name="provisioning.rotate_key",
    acks_late=True,
    autoretry_for=(Unavailable,),
    max_retries=3,
    retry_backoff=30,
    retry_backoff_max=600,
)
def rotate_key(agent_id: str) -> bool:
    return lifecycle.rotate_key(_deps.provisioning(), agent_id)


@app.task(
    name="provisioning.retire_agent",
    acks_late=True,
    autoretry_for=(Unavailable,),
    max_retries=5,
    retry_backoff=30,
    retry_backoff_max=600,
)
def retire_agent(
    agent_id: str, reason: str = "retired by operator", approval_id: str | None = None
) -> str:
    """Irreversible (it revokes the identity): runs only under an approval that
    names exactly this agent, claimed once, whatever sent the message."""
    approvals = _approvals()
    try:
        if approval_id is None:
            raise NotApproved("retire_agent needs an approval; request one with `fleet retire`")
        approvals.require_approved(approval_id, action="retire_agent", subject=agent_id)
    except NotApproved as exc:
        raise Reject(str(exc), requeue=False) from None
    rdeps = lifecycle.RetireDeps(inflight=lambda a: inflight(_deps.hot(), a))
    status = lifecycle.retire_agent(_deps.provisioning(), rdeps, agent_id, reason)
    if status == "retired":
        with contextlib.suppress(NotApproved):  # a redelivery after the claim
            approvals.consume(approval_id, action="retire_agent", subject=agent_id)
    return str(status)


@app.task(name="provisioning.upgrade_tier", acks_late=True)
def upgrade_tier(
    agent_id: str,
    new_tier: str,
    projected_volume: int,
    requested_by: str = "celery",
    approval_id: str | None = None,
) -> dict[str, Any]:
    """Estimate first; above the configured increase (+200 %) wait for an approval."""
    deps = _deps.provisioning()
    plan = lifecycle.plan_upgrade(deps, agent_id, new_tier, projected_volume)
    threshold = deps.policy.scaling.tier_upgrade_approval_increase
    approved_by: list[str] = []
    if plan.needs_approval(threshold):
        approvals = _approvals()
        if approval_id is None:
            gate = approvals.request(
                "upgrade_tier",
                agent_id,
                requested_by,
                reason=f"cost +{plan.as_details()['increase_pct']} %",
                details=plan.as_details(),
                task="provisioning.upgrade_tier",
                task_kwargs={
                    "agent_id": agent_id,
                    "new_tier": new_tier,
                    "projected_volume": projected_volume,
                    "requested_by": requested_by,
                },
            )
            if not gate.may_run:
                return {
                    "agent_id": agent_id,
                    "status": "awaiting-approval",
                    "approval_id": gate.request_id,
                    **plan.as_details(),
                }
        else:
            try:
                view = approvals.consume(approval_id, action="upgrade_tier", subject=agent_id)
            except NotApproved as exc:
                raise Reject(str(exc), requeue=False) from None
            approved_by = [v.approver for v in view.votes if v.verdict == "approve"]
    lifecycle.apply_upgrade(deps, plan, approved_by)
    return {"agent_id": agent_id, "status": "upgraded", **plan.as_details()}


def _approvals() -> Approvals:
    from tasks.audit import approvals

    return approvals()
