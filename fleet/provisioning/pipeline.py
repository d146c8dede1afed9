"""Provisioning: a manifest becomes a job; each agent goes through the steps.

Per agent: register (own key) → wallet → claim chain → SLA → marketplace
listing → reputation seed → audit entry → health check. Each finished step is
committed to the agent's row before the next begins, so a retried or
redelivered job resumes where it stopped, and a re-run of the same manifest
calls nothing for an agent that is already active.

A step that still fails after the gateway client's retry ceiling is
compensated: a wallet is frozen and drained back to the treasury, the
identity deregistered, and the agent reported failed with the reason. If the
compensation itself cannot finish (the gateway is down), the agent stays
``compensating`` and `resume_stalled` finishes it later: nothing half-made is
left at the gateway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, cast

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy
from fleet.clock import Clock
from fleet.gateway import (
    Conflict,
    GatewayClient,
    GatewayError,
    InvalidResponse,
    NotFound,
    Tool,
    ToolCall,
    tools,
)
from fleet.gateway.loop import LoopGatewayClient
from fleet.gateway.schemas import RegisterAgentResult
from fleet.hotstate import Lease
from fleet.provisioning.manifest import (
    AgentGroup,
    FleetManifest,
    ManifestError,
    manifest_digest,
    plan_agents,
    validate_manifest,
)
from fleet.provisioning.records import JobAgent, JobState, ProvisioningJob
from fleet.secrets import KeyVault
from fleet.storage.db import write_connection, write_session
from fleet.storage.records import Agent, AgentStatus, SlaContract

log = logging.getLogger(__name__)

STEPS = ("register", "wallet", "claims", "sla", "listing", "reputation", "audit", "health")
DONE_STATUSES = (AgentStatus.ACTIVE, AgentStatus.FAILED)


class ProvisioningFrozen(Exception):
    """The fleet's provisioning is frozen (the emergency alert rule); nothing starts."""


class AuditSink(Protocol):
    def __call__(
        self, *, actor: str, action: str, subject: str, details: dict[str, Any]
    ) -> object: ...


@dataclass
class ProvisioningDeps:
    sessions: sessionmaker[Session]
    gateway: GatewayClient | LoopGatewayClient
    policy: Policy
    vault: KeyVault
    clock: Clock
    audit: AuditSink
    # Per-agent mutual exclusion across workers: (name, ttl) -> context yielding
    # a lease (renewed after every step) or None when another worker holds it.
    lock: Callable[[str, float], AbstractContextManager[Lease | None]]
    is_frozen: Callable[[str], bool] = lambda fleet: False
    # Longer than one step can take (retry ceiling × timeout); a worker killed
    # mid-agent delays that agent by at most this much.
    lock_ttl_s: float = 60.0


@dataclass(frozen=True)
class JobSubmission:
    job_id: str
    total: int
    to_dispatch: list[str]
    already_active: int


def record_invalid_job(
    sessions: sessionmaker[Session],
    job_id: str,
    data: Any,
    problems: list[str],
    now: datetime,
    submitted_by: str,
) -> None:
    """Keep a refused manifest's job with its problems, so GET /jobs/{id} explains itself."""
    with write_session(sessions) as s:
        if s.get(ProvisioningJob, job_id) is None:
            s.add(
                ProvisioningJob(
                    job_id=job_id,
                    manifest=data if isinstance(data, dict) else {"raw": repr(data)[:2000]},
                    state=JobState.INVALID,
                    problems=problems,
                    total=0,
                    submitted_by=submitted_by,
                    created_at=now,
                    updated_at=now,
                )
            )


def queue_job(deps: ProvisioningDeps, data: Any, job_id: str, submitted_by: str) -> FleetManifest:
    """Validate and record a job before its message is sent, so its id answers at once."""
    now = deps.clock.now()
    try:
        manifest = validate_manifest(data, deps.policy)
    except ManifestError as exc:
        record_invalid_job(deps.sessions, job_id, data, exc.problems, now, submitted_by)
        raise
    if deps.is_frozen(manifest.fleet):
        raise ProvisioningFrozen(f"provisioning is frozen for fleet {manifest.fleet!r}")
    with write_session(deps.sessions) as s:
        s.add(_job_row(job_id, manifest, now, submitted_by, JobState.QUEUED, []))
    return manifest


def submit_job(
    deps: ProvisioningDeps, data: Any, job_id: str, submitted_by: str = "unknown"
) -> JobSubmission:
    """Validate, record the job and its agents; return the agents that still need work.

    Idempotent: the same job id twice returns the same job; the same manifest
    under a new job id finds the agents made before and dispatches none of the
    active ones.
    """
    now = deps.clock.now()
    try:
        manifest = validate_manifest(data, deps.policy)
    except ManifestError as exc:
        record_invalid_job(deps.sessions, job_id, data, exc.problems, now, submitted_by)
        raise
    if deps.is_frozen(manifest.fleet):
        with write_session(deps.sessions) as s:
            if s.get(ProvisioningJob, job_id) is None:
                s.add(
                    _job_row(
                        job_id,
                        manifest,
                        now,
                        submitted_by,
                        JobState.REFUSED,
                        ["provisioning is frozen for this fleet"],
                    )
                )
        raise ProvisioningFrozen(f"provisioning is frozen for fleet {manifest.fleet!r}")

    planned = list(plan_agents(manifest))
    with write_session(deps.sessions) as s:
        job = s.get(ProvisioningJob, job_id)
        if job is None:
            s.add(_job_row(job_id, manifest, now, submitted_by, JobState.RUNNING, []))
        elif job.state == JobState.QUEUED:
            job.state, job.updated_at = JobState.RUNNING, now
        existing = {
            a.agent_id: a
            for a in s.scalars(
                select(Agent).where(Agent.agent_id.in_([p.agent_id for p in planned]))
            )
        }
        linked = set(s.scalars(select(JobAgent.agent_id).where(JobAgent.job_id == job_id)))
        to_dispatch, active = [], 0
        for p in planned:
            agent = existing.get(p.agent_id)
            if agent is None:
                s.add(_agent_row(p.agent_id, manifest, p.group, now))
            elif agent.status == AgentStatus.FAILED:
                # Cleaned up before; a new run of the manifest tries it afresh.
                agent.status, agent.steps_done, agent.failure_reason, agent.updated_at = (
                    AgentStatus.PROVISIONING,
                    [],
                    None,
                    now,
                )
                agent.extra = {**agent.extra, "spec": _spec(manifest, p.group)}
            if agent is not None and agent.status == AgentStatus.ACTIVE:
                active += 1
            else:
                to_dispatch.append(p.agent_id)
        s.flush()  # job and agents exist before the links that point at them
        s.add_all(
            JobAgent(job_id=job_id, agent_id=p.agent_id)
            for p in planned
            if p.agent_id not in linked
        )
    return JobSubmission(job_id, len(planned), to_dispatch, active)


def _spec(manifest: FleetManifest, group: AgentGroup) -> dict[str, Any]:
    return {
        "group": group.model_dump(mode="json"),
        "fleet": manifest.fleet,
        "environment": manifest.environment,
    }


def _job_row(
    job_id: str,
    manifest: FleetManifest,
    now: datetime,
    by: str,
    state: JobState,
    problems: list[str],
) -> ProvisioningJob:
    return ProvisioningJob(
        job_id=job_id,
        fleet=manifest.fleet,
        environment=manifest.environment,
        manifest=manifest.model_dump(mode="json"),
        manifest_digest=manifest_digest(manifest),
        state=state,
        problems=problems,
        total=manifest.total_agents,
        submitted_by=by,
        created_at=now,
        updated_at=now,
    )


def _agent_row(agent_id: str, manifest: FleetManifest, group: AgentGroup, now: datetime) -> Agent:
    return Agent(
        agent_id=agent_id,
        fleet=manifest.fleet,
        environment=manifest.environment,
        id_prefix=group.id_prefix,
        tier=group.tier,
        capabilities=list(group.capabilities),
        sla_template=group.sla_template,
        status=AgentStatus.PROVISIONING,
        steps_done=[],
        traffic_weight="1",
        extra={"spec": _spec(manifest, group)},
        created_at=now,
        updated_at=now,
    )


# ---------------------------------------------------------------- one agent


@dataclass
class _Run:
    """One agent's pass through the steps: what the steps read and produce."""

    deps: ProvisioningDeps
    agent: Agent
    group: AgentGroup
    fleet: str
    environment: str
    updates: dict[str, Any] = field(default_factory=dict)


def provision_agent(deps: ProvisioningDeps, agent_id: str) -> AgentStatus | None:
    """Run the remaining steps of one agent. Returns its status, or None when
    another worker holds it (a duplicate message; that worker finishes it)."""
    with deps.lock(f"provision:{agent_id}", deps.lock_ttl_s) as lease:
        if lease is None:
            return None
        with deps.sessions() as s:
            agent = s.get(Agent, agent_id)
            if agent is None:
                raise LookupError(f"agent {agent_id} is not part of any provisioning job")
            s.expunge(agent)
        if agent.status in (AgentStatus.ACTIVE, AgentStatus.FAILED):
            return AgentStatus(agent.status)
        if agent.status == AgentStatus.COMPENSATING:
            return _compensate(deps, agent, agent.failure_reason or "earlier failure")
        spec = agent.extra["spec"]
        run = _Run(
            deps,
            agent,
            AgentGroup.model_validate(spec["group"]),
            spec["fleet"],
            spec["environment"],
        )
        for phase in PHASES:
            todo = [step for step in phase if step not in agent.steps_done]
            if not todo:
                continue
            done, failure = _run_phase(run, todo)
            if done:
                fields: dict[str, Any] = {}
                for step_fields in done.values():
                    fields |= step_fields
                agent.steps_done = [*agent.steps_done, *done]
                finished = len(agent.steps_done) == len(STEPS)
                _save(
                    deps,
                    agent_id,
                    {
                        "steps_done": agent.steps_done,
                        **fields,
                        **({"status": AgentStatus.ACTIVE} if finished else {}),
                    },
                )
                for key, value in fields.items():
                    setattr(agent, key, value)
            if failure is not None:
                step, exc = failure
                reason = f"step {step} failed: {type(exc).__name__}: {exc}"
                log.warning("agent %s: %s; compensating", agent_id, reason)
                return _compensate(deps, agent, reason)
            lease.renew()
        return AgentStatus.ACTIVE


def _run_phase(
    run: _Run, steps: list[str]
) -> tuple[dict[str, dict[str, Any]], tuple[str, BaseException] | None]:
    """Run a phase's remaining steps: what each finished step records, and the first failure."""
    done: dict[str, dict[str, Any]] = {}
    if len(steps) == 1:
        try:
            done[steps[0]] = _STEP_FUNCTIONS[steps[0]](run)
        except Exception as exc:  # noqa: BLE001 - whatever broke, nothing half-made stays behind
            return done, (steps[0], exc)
        return done, None
    # Independent steps: their calls go to the gateway together.
    calls = {step: _PARALLEL_STEPS[step][0](run) for step in steps}
    to_send = [(step, call) for step, call in calls.items() if call is not None]
    answers = dict(
        zip(
            [step for step, _ in to_send],
            run.deps.gateway.run_many([c for _, c in to_send]),
            strict=True,
        )
    )
    failure = None
    for step in steps:
        answer = answers.get(step)
        if isinstance(answer, BaseException):
            failure = failure or (step, answer)
            continue
        try:
            done[step] = _PARALLEL_STEPS[step][1](run, answer)
        except Exception as exc:  # noqa: BLE001
            failure = failure or (step, exc)
    return done, failure


_AGENTS = cast(Table, Agent.__table__)


def _save(deps: ProvisioningDeps, agent_id: str, values: dict[str, Any]) -> None:
    # Core, not the ORM: this runs after every step of every agent, and the
    # ORM's bulk-update path cost three times the statement itself.
    with write_connection(deps.sessions) as conn:
        conn.execute(
            _AGENTS.update()
            .where(_AGENTS.c.agent_id == agent_id)
            .values(**values, updated_at=deps.clock.now())
        )


def _register(run: _Run) -> dict[str, Any]:
    deps, agent = run.deps, run.agent
    metadata = {
        "fleet": run.fleet,
        "environment": run.environment,
        "provisioned_at": deps.clock.now().isoformat(),
    }
    try:
        result = deps.gateway.run(
            tools.register_agent(agent.agent_id, agent.tier, agent.capabilities, metadata)
        )
    except Conflict:
        # Registered by an earlier run that died before it could store the key:
        # the old key is lost to us, so take a fresh one.
        result = deps.gateway.run(tools.rotate_agent_key(agent.agent_id))
    return {
        "api_key_encrypted": deps.vault.encrypt(_key_of(result)),
        "key_rotated_at": deps.clock.now(),
    }


def _key_of(result: RegisterAgentResult) -> str:
    if result.api_key is None:
        raise InvalidResponse(
            "register_agent answered without an api_key",
            tool=Tool.REGISTER_AGENT,
            status=200,
            code="missing_key",
        )
    return str(result.api_key.get_secret_value())


def _wallet(run: _Run) -> dict[str, Any]:
    deps, agent = run.deps, run.agent
    try:
        result = deps.gateway.run(tools.create_wallet(agent.agent_id, run.group.initial_balance))
        wallet_id = result.wallet_id
    except Conflict:
        wallet_id = agent.wallet_id or f"wallet-{agent.agent_id}"  # made by an earlier run
    return {"wallet_id": wallet_id}


def _claims_call(run: _Run) -> ToolCall[Any]:
    # Every chain starts with what we can attest ourselves: which fleet and
    # environment the agent belongs to; the manifest's own claims follow.
    membership = {
        "type": "fleet-membership",
        "value": f"{run.fleet}/{run.environment}",
        "issuer": "fleet-commander",
    }
    claims = [membership, *(c.model_dump(exclude_none=True) for c in run.group.trust_claims)]
    return tools.build_claim_chain(run.agent.agent_id, claims)


def _claims_record(run: _Run, result: Any) -> dict[str, Any]:
    return {"claim_chain_id": result.chain_id}


def _sla_terms(run: _Run) -> dict[str, Any]:
    return run.deps.policy.sla_templates[run.group.sla_template].model_dump(mode="json")


def _sla_call(run: _Run) -> ToolCall[Any]:
    return tools.create_sla(run.agent.agent_id, _sla_terms(run))


def _sla_record(run: _Run, result: Any) -> dict[str, Any]:
    deps, agent = run.deps, run.agent
    with write_session(deps.sessions) as s:
        if s.get(SlaContract, result.sla_id) is None:
            s.add(
                SlaContract(
                    sla_id=result.sla_id,
                    agent_id=agent.agent_id,
                    template=run.group.sla_template,
                    terms=_sla_terms(run),
                    created_at=deps.clock.now(),
                )
            )
    return {}


def _listing_call(run: _Run) -> ToolCall[Any]:
    pricing = {name: str(amount) for name, amount in run.group.pricing.items()}
    return tools.register_service(run.agent.agent_id, run.agent.capabilities, pricing)


def _listing_record(run: _Run, result: Any) -> dict[str, Any]:
    return {"service_id": result.service_id}


def _reputation_call(run: _Run) -> ToolCall[Any] | None:
    if not run.group.seed_reputation:
        return None
    # A neutral starting record so a new agent is not ranked as unknown.
    return tools.submit_metrics(
        run.agent.agent_id, {"task_completion_rate": "0.95", "error_rate": "0.01", "tasks": 0}
    )


def _nothing(run: _Run, result: Any) -> dict[str, Any]:
    return {}


def _audit(run: _Run) -> dict[str, Any]:
    agent = run.agent
    run.deps.audit(
        actor="fleet-commander/provisioning",
        action="provision_agent",
        subject=agent.agent_id,
        details={
            "fleet": run.fleet,
            "environment": run.environment,
            "tier": agent.tier,
            "wallet_id": agent.wallet_id,
            "claim_chain_id": agent.claim_chain_id,
            "service_id": agent.service_id,
            "sla_template": run.group.sla_template,
            "initial_balance": str(run.group.initial_balance),
        },
    )
    return {}


def _health(run: _Run) -> dict[str, Any]:
    analytics = run.deps.gateway.run(tools.get_analytics(run.agent.agent_id))
    first = {"latency_p99": str(analytics.latency_p99), "error_rate": str(analytics.error_rate)}
    return {"extra": {**run.agent.extra, "first_health": first}}


_STEP_FUNCTIONS: dict[str, Callable[[_Run], dict[str, Any]]] = {
    "register": _register,
    "wallet": _wallet,
    "audit": _audit,
    "health": _health,
}

# Claims, SLA, listing and reputation need the identity (and, for the SLA's
# money terms, the wallet) but not each other: one round trip instead of four.
_PARALLEL_STEPS: dict[
    str, tuple[Callable[[_Run], ToolCall[Any] | None], Callable[[_Run, Any], dict[str, Any]]]
] = {
    "claims": (_claims_call, _claims_record),
    "sla": (_sla_call, _sla_record),
    "listing": (_listing_call, _listing_record),
    "reputation": (_reputation_call, _nothing),
}

PHASES: tuple[tuple[str, ...], ...] = (
    ("register",),
    ("wallet",),
    ("claims", "sla", "listing", "reputation"),
    ("audit",),
    ("health",),
)
assert tuple(step for phase in PHASES for step in phase) == STEPS
assert set(_STEP_FUNCTIONS) | set(_PARALLEL_STEPS) == set(STEPS)


# ---------------------------------------------------------------- compensation


def _compensate(deps: ProvisioningDeps, agent: Agent, reason: str) -> AgentStatus:
    """Undo what the gateway holds for this agent; FAILED when clean, else COMPENSATING."""
    _save(deps, agent.agent_id, {"status": AgentStatus.COMPENSATING, "failure_reason": reason})
    gateway, treasury = deps.gateway, deps.policy.provisioning.treasury_wallet
    try:
        if "wallet" in agent.steps_done or "register" in agent.steps_done:
            _drain_wallet(gateway, agent.agent_id, treasury)
        if "register" in agent.steps_done:
            try:
                gateway.run(
                    tools.deregister_agent(agent.agent_id, f"provisioning failed: {reason}"[:500])
                )
            except NotFound:
                pass  # already gone
    except GatewayError as exc:
        log.warning("agent %s: compensation incomplete (%s); will resume", agent.agent_id, exc)
        return AgentStatus.COMPENSATING
    _save(
        deps,
        agent.agent_id,
        {"status": AgentStatus.FAILED, "steps_done": [], "api_key_encrypted": None},
    )
    deps.audit(
        actor="fleet-commander/provisioning",
        action="compensate_agent",
        subject=agent.agent_id,
        details={"reason": reason, "steps_undone": list(agent.steps_done)},
    )
    return AgentStatus.FAILED


def _drain_wallet(gateway: GatewayClient | LoopGatewayClient, agent_id: str, treasury: str) -> None:
    """Freeze the wallet (no more spending), then move what is left to the treasury."""
    try:
        gateway.run(tools.freeze_wallet(agent_id, "provisioning failed"))
    except NotFound:
        return  # no wallet was made
    except Conflict:
        pass  # already frozen
    balance = gateway.run(tools.get_balance(agent_id)).balance
    if balance > Decimal("0"):
        gateway.run(tools.transfer_funds(agent_id, treasury, balance))


# ---------------------------------------------------------------- progress


@dataclass(frozen=True)
class AgentProgress:
    agent_id: str
    status: str
    steps_done: list[str]
    failure_reason: str | None


@dataclass(frozen=True)
class JobProgress:
    job_id: str
    state: str
    fleet: str | None
    total: int
    done: int
    failed: int
    pending: int
    problems: list[str]
    agents: list[AgentProgress]

    def as_dict(self, with_agents: bool = True) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "agents"}
        if with_agents:
            out["agents"] = [a.__dict__ for a in self.agents]
        return out


def job_progress(
    sessions: sessionmaker[Session], job_id: str, with_agents: bool = True
) -> JobProgress | None:
    """Counts always; the per-agent list only when asked (a poller needs counts)."""
    with sessions() as s:
        job = s.get(ProvisioningJob, job_id)
        if job is None:
            return None
        linked = select(JobAgent.agent_id).where(JobAgent.job_id == job_id)
        counts = dict(
            s.execute(
                select(Agent.status, func.count())
                .where(Agent.agent_id.in_(linked))
                .group_by(Agent.status)
            ).all()
        )
        agents = []
        if with_agents:
            rows = s.execute(
                select(Agent.agent_id, Agent.status, Agent.steps_done, Agent.failure_reason)
                .where(Agent.agent_id.in_(linked))
                .order_by(Agent.agent_id)
            ).all()
            agents = [
                AgentProgress(r.agent_id, r.status, list(r.steps_done), r.failure_reason)
                for r in rows
            ]
    done = counts.get(AgentStatus.ACTIVE, 0)
    failed = counts.get(AgentStatus.FAILED, 0)
    linked_total = sum(counts.values())
    pending = linked_total - done - failed
    state = job.state
    if state == JobState.RUNNING and linked_total and pending == 0:
        state = JobState.DONE
    return JobProgress(
        job.job_id, state, job.fleet, job.total, done, failed, pending, list(job.problems), agents
    )


def stalled_agents(
    sessions: sessionmaker[Session], older_than: datetime, limit: int = 1000
) -> list[str]:
    """Agents whose provisioning stopped moving (a worker died): candidates to re-dispatch."""
    with sessions() as s:
        return list(
            s.scalars(
                select(Agent.agent_id)
                .where(
                    Agent.status.in_([AgentStatus.PROVISIONING, AgentStatus.COMPENSATING]),
                    Agent.updated_at < older_than,
                )
                .limit(limit)
            )
        )


def stall_cutoff(clock: Clock, stall_s: float) -> datetime:
    return clock.now() - timedelta(seconds=stall_s)


def iter_chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
