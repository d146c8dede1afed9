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

import logging
from typing import Any

from celery import Task
from celery.exceptions import Reject

from fleet.approvals import NotApproved
from fleet.approvals.gate import Held, clear, run_approved
from fleet.control import LoopPaused
from fleet.hotstate import break_dead_lock, inflight
from fleet.provisioning import lifecycle, pipeline
from fleet.provisioning.manifest import ManifestError
from fleet.scaling import autoscaler, enforce
from tasks._base import fleet_task, heartbeat_task, runtime
from workers.app import app
from workers.queues import FleetQueue, TaskName

log = logging.getLogger(__name__)

heartbeat = heartbeat_task(FleetQueue.PROVISIONING)

# Dispatching a thousand agents one message at a time costs ~1 s; sending
# them over one producer connection keeps that to a fraction.
_DISPATCH_CHUNK = 500


def dispatch_agents(job_id: str, agent_ids: list[str]) -> None:
    with app.producer_or_acquire() as producer:
        for agent_id in agent_ids:
            provision_agent.apply_async(args=(job_id, agent_id), producer=producer)


@fleet_task(TaskName.PROVISION_FLEET, bind=True, ignore_result=False)
def provision_fleet(
    self: Task, manifest: Any, job_id: str | None = None, submitted_by: str = "celery"
) -> dict[str, Any]:
    job_id = job_id or self.request.id
    try:
        submission = pipeline.submit_job(runtime().provisioning, manifest, job_id, submitted_by)
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


@fleet_task(TaskName.PROVISION_AGENT, bind=True)
def provision_agent(self: Task, job_id: str, agent_id: str) -> dict[str, Any]:
    try:
        status = pipeline.provision_agent(runtime().provisioning, agent_id)
    except LoopPaused as paused:  # the kill switch: the step waits, no attempt spent
        raise self.retry(countdown=paused.retry_in, max_retries=None) from None
    return {
        "job_id": job_id,
        "agent_id": agent_id,
        "status": str(status) if status else "held-by-another-worker",
    }


@fleet_task(TaskName.RESUME_STALLED, ignore_result=False)
def resume_stalled(stall_s: float = 300.0) -> int:
    """Re-dispatch agents whose provisioning stopped moving (a worker died mid-step)."""
    deps = runtime().provisioning
    stalled = pipeline.stalled_agents(deps.sessions, pipeline.stall_cutoff(deps.clock, stall_s))
    if stalled:
        log.info("re-dispatching %d stalled agents", len(stalled))
        dispatch_agents("resume", stalled)
    return len(stalled)


@fleet_task(TaskName.RESUME_INTERRUPTED, ignore_result=False)
def resume_interrupted() -> dict[str, int]:
    """Sent by each provisioning worker as it starts: every agent still provisioning
    goes again now, not at the stall sweep. An agent whose lock a dead worker of this
    host held is freed at once; one held elsewhere comes back when that lock expires.
    The lock and the step records make each duplicate message harmless."""
    rt = runtime()
    agents = pipeline.interrupted_agents(rt.provisioning.sessions)
    now: list[tuple[str, float]] = []
    later: list[tuple[str, float]] = []
    for agent_id in agents:
        wait = break_dead_lock(rt.redis, f"provision:{agent_id}")
        (later if wait else now).append((agent_id, wait))
    with app.producer_or_acquire() as producer:
        for agent_id, wait in [*now, *later]:
            provision_agent.apply_async(
                args=("resume", agent_id), countdown=wait + 0.5 if wait else None, producer=producer
            )
    if agents:
        log.info(
            "resuming %d interrupted agents (%d after a lock expires)", len(agents), len(later)
        )
    return {"resumed": len(now), "after_lock": len(later)}


@fleet_task(TaskName.ROTATE_DUE_KEYS, ignore_result=False)
def rotate_due_keys() -> int:
    """Beat: find agents whose key is older than the rotation period; one task each."""
    due = lifecycle.keys_due(runtime().provisioning)
    with app.producer_or_acquire() as producer:
        for agent_id in due:
            rotate_key.apply_async(args=(agent_id,), producer=producer)
    return len(due)


# The gateway client retries a transient failure up to its own ceiling; a
# failure past it fails the task, and the hourly rotate_due_keys finds the key again.
@fleet_task(TaskName.ROTATE_KEY, ignore_result=False)
def rotate_key(agent_id: str) -> bool:
    return lifecycle.rotate_key(runtime().provisioning, agent_id)


@fleet_task(TaskName.RETIRE_AGENT, ignore_result=False)
def retire_agent(
    agent_id: str, reason: str = "retired by operator", approval_id: str | None = None
) -> str:
    """Irreversible (it revokes the identity): runs only under an approval that
    names exactly this agent, claimed once, whatever sent the message."""
    rt = runtime()
    rdeps = lifecycle.RetireDeps(inflight=lambda a: inflight(rt.redis, a))
    try:
        status, _ = run_approved(
            rt.approvals,
            action="retire_agent",
            subject=agent_id,
            approval_id=approval_id,
            work=lambda: lifecycle.retire_agent(rt.provisioning, rdeps, agent_id, reason),
            finished=lambda status: status == "retired",
        )
    except NotApproved as exc:
        raise Reject(f"{exc}; request one with `fleet retire`", requeue=False) from None
    return str(status)


@fleet_task(TaskName.UPGRADE_TIER, ignore_result=False)
def upgrade_tier(
    agent_id: str,
    new_tier: str,
    requested_by: str = "celery",
    approval_id: str | None = None,
) -> dict[str, Any]:
    """Estimate first; above the configured increase (+200 %) wait for an approval; then
    record the request for the operator (the gateway's API grants no tier)."""
    rt = runtime()
    deps = rt.provisioning
    plan = lifecycle.plan_upgrade(deps, agent_id, new_tier)
    threshold = deps.policy.scaling.tier_upgrade_approval_increase
    approved_by: list[str] = []
    if plan.needs_approval(threshold):
        try:
            passed = clear(
                rt.approvals,
                action="upgrade_tier",
                subject=agent_id,
                approval_id=approval_id,
                ask=lambda: rt.approvals.request(
                    "upgrade_tier",
                    agent_id,
                    requested_by,
                    reason=f"cost +{plan.as_details()['increase_pct']} %",
                    details=plan.as_details(),
                    task=TaskName.UPGRADE_TIER,
                    task_kwargs={
                        "agent_id": agent_id,
                        "new_tier": new_tier,
                        "requested_by": requested_by,
                    },
                ),
            )
        except NotApproved as exc:
            raise Reject(str(exc), requeue=False) from None
        if isinstance(passed, Held):
            return {
                "agent_id": agent_id,
                "status": "awaiting-approval",
                "approval_id": passed.request_id,
                **plan.as_details(),
            }
        approved_by = list(passed.approvers)
    instructions = lifecycle.record_upgrade_request(deps, plan, approved_by)
    return {
        "agent_id": agent_id,
        "status": "awaiting-key",
        "instructions": instructions,
        **plan.as_details(),
    }


# ---------------------------------------------------------------- the autoscaler
# Its decision pass runs here, on the provisioning queue, and not on metrics: it is a
# handful of reads per segment each minute, and what it decides (provision, retire) is
# provisioning work; a metrics backlog (sweeps of thousands of agents) must not delay it.


@fleet_task(TaskName.SCALING_EVALUATE, ignore_result=False)
def scaling_evaluate() -> list[dict[str, Any]]:
    """Beat: one decision per segment, logged; acted on where the segment enforces."""
    return autoscaler.evaluate(runtime().scaling)


@fleet_task(TaskName.SCALING_SCALE_UP, ignore_result=False)
def scaling_scale_up(segment: str, count: int, decision_id: str) -> dict[str, Any]:
    rt = runtime()
    try:
        submission = autoscaler.scale_up(rt.scaling, rt.provisioning, segment, count, decision_id)
    except (autoscaler.ScalingError, pipeline.ProvisioningFrozen, ValueError) as exc:
        raise Reject(str(exc), requeue=False) from None
    dispatch_agents(submission.job_id, submission.to_dispatch)
    return {"job_id": submission.job_id, "dispatched": len(submission.to_dispatch)}


@fleet_task(TaskName.SCALING_RETIRE, ignore_result=False)
def scaling_retire(agent_id: str, decision_id: str) -> str:
    """A graceful retirement (drain first) the autoscaler chose: covered by the segment's
    enforce approval, so only for an agent an enforced scale-down decision named."""
    rt = runtime()
    try:
        reason = autoscaler.retirement_reason(rt.scaling, agent_id, decision_id)
    except autoscaler.ScalingError as exc:
        raise Reject(str(exc), requeue=False) from None
    rdeps = lifecycle.RetireDeps(inflight=lambda a: inflight(rt.redis, a))
    return str(lifecycle.retire_agent(rt.provisioning, rdeps, agent_id, reason))


@fleet_task(TaskName.SCALING_ENFORCE, ignore_result=False)
def scaling_enforce(
    segment: str, requested_by: str, reason: str, approval_id: str | None = None
) -> bool:
    """Sent once ``autoscale_enforce`` is approved: the segment's autoscaler acts from now on."""
    rt = runtime()
    if approval_id is None:
        raise Reject("autoscale_enforce needs an approval; request one", requeue=False)
    try:
        return enforce.apply_enforce(
            rt.approvals,
            rt.sessions,
            request_id=approval_id,
            segment=segment,
            requested_by=requested_by,
            reason=reason,
        )
    except (NotApproved, autoscaler.ScalingError) as exc:
        raise Reject(str(exc), requeue=False) from None
