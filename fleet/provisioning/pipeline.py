"""Provisioning: a manifest becomes a job; each agent goes through the steps.

Per agent, against the gateway's REST API (who holds what: docs table):

========  ==================================================================
register  ``POST /v1/register`` (no key): a free key, stored encrypted, and a
          wallet with the 500-credit signup bonus. 409 means the id exists:
          we go on only when we already hold its key, else the agent fails
          with that reason and nothing at the gateway is touched.
identity  its Ed25519 identity key: a key pair made here, the private key kept
          encrypted, the public key set at the gateway (``POST /v1/identity/
          agents``, replacing the one registration made, which nobody holds)
          and read back. The agent signs its heartbeats with it
          (:mod:`fleet.provisioning.identity`).
funding   the wallet brought to the manifest's balance: the operator key
          deposits the difference or withdraws the excess, under an
          idempotency key derived from the job and the agent.
budget    ``PUT …/budget``: the daily/monthly cap from policy.
metrics   the SLA template's targets as metric claims (``submit_metrics``). pro
claims    a claim chain over them (``build_claim_chain``). pro
listing   the marketplace listing (``register_service``). pro
sla       the SLA contract, in our database (the gateway has none).
audit     an audit entry.
health    the gateway's own reads: identity found, balance, budget cap.
========  ==================================================================

The manifest's trust claims are held by Fleet Commander (the gateway has no
free-form claims); there is no reputation seed (the gateway never computes
reputation). Tiers belong to keys and no API grants one: a group whose tier is
below a step's skips it, recorded; an agent whose key is below it waits for
an operator-minted key (:func:`import_agent_key`) or fails, with the reason
recorded on the agent and its jobs. Never silently.

Each finished step is committed to the agent's row before the next begins,
so a redelivered job resumes where it stopped, and a re-run of the same
manifest calls nothing for an agent that is already active. A step that
still fails after the client's retry ceiling is compensated: the listing
deactivated, the funds swept to the treasury (admin withdraw, then deposit
into the treasury agent), the wallet frozen. The identity cannot be deleted
at the gateway; the record says so, and keeps the key so a later run goes on
with it. If compensation cannot finish, the agent stays ``compensating`` and
`resume_stalled` finishes it later.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, cast

from sqlalchemy import Table, func, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy, SlaTerms
from fleet.clock import Clock
from fleet.gateway import Gateway
from fleet.gateway import operations as ops
from fleet.gateway.errors import (
    AlreadyExists,
    GatewayError,
    InsufficientTier,
    NotFound,
    WalletFrozen,
)
from fleet.gateway.keys import Auth
from fleet.hotstate import Lease
from fleet.provisioning import identity
from fleet.provisioning.manifest import (
    AgentGroup,
    FleetManifest,
    ManifestError,
    manifest_digest,
    plan_agents,
    validate_manifest,
)
from fleet.provisioning.manifest import (
    agent_id as planned_agent_id,
)
from fleet.provisioning.records import JobAgent, JobState, ProvisioningJob
from fleet.secrets import KeyVault
from fleet.storage.db import write_connection, write_session
from fleet.storage.records import Agent, AgentStatus, SlaContract

log = logging.getLogger(__name__)

STEPS = (
    "register",
    "identity",
    "funding",
    "budget",
    "metrics",
    "claims",
    "listing",
    "sla",
    "audit",
    "health",
)
# The key tier each gateway step needs (real-gateway.md §1).
STEP_TIER = {"metrics": "pro", "claims": "pro", "listing": "pro"}
STEP_LABEL = {"metrics": "metric claims", "claims": "claim chain", "listing": "listing"}
DONE_STATUSES = (AgentStatus.ACTIVE, AgentStatus.FAILED)
ACTOR = "fleet-commander/provisioning"

# The metric names submit_metrics accepts (any other is refused with a 400).
GATEWAY_METRICS = frozenset(
    {
        "accuracy",
        "aum",
        "error_rate",
        "f1_score",
        "latency_ms",
        "loss",
        "max_drawdown_30d",
        "p50_latency_ms",
        "p95_latency_ms",
        "p99_latency_ms",
        "pnl_30d",
        "precision",
        "recall",
        "requests_per_second",
        "response_time_ms",
        "sharpe_30d",
        "signal_accuracy_30d",
        "success_rate",
        "task_completion_rate",
        "throughput_rps",
        "total_trades_30d",
        "uptime",
        "win_rate_30d",
    }
)


# The database unreachable or restarting: a reason to try again later, never to compensate.
DB_UNREACHABLE = (OperationalError, InterfaceError)


class ProvisioningFrozen(Exception):
    """The fleet's provisioning is frozen (the emergency alert rule); nothing starts."""


class AuditSink(Protocol):
    def __call__(
        self,
        *,
        actor: str,
        action: str,
        subject: str,
        details: dict[str, Any],
        event_id: str | None = None,
    ) -> object: ...


class KeyTrial(Protocol):
    """Lends a key not stored yet to the gateway calls made inside (``AgentKeyRing.trying``)."""

    def trying(self, agent_id: str, api_key: str) -> AbstractContextManager[None]: ...


@dataclass
class ProvisioningDeps:
    sessions: sessionmaker[Session]
    gateway: Gateway
    policy: Policy
    vault: KeyVault
    clock: Clock
    audit: AuditSink
    # Per-agent mutual exclusion across workers: (name, ttl) -> context yielding
    # a lease (renewed after every step) or None when another worker holds it.
    lock: Callable[[str, float], AbstractContextManager[Lease | None]]
    is_frozen: Callable[[str], bool] = lambda fleet: False
    # The kill switch (fleet.control.LoopState.check): raises LoopPaused while the whole
    # control loop is paused, so no provisioning step runs.
    check_loop: Callable[[], None] = lambda: None
    # Longer than one step can take (retry ceiling × timeout); a worker killed
    # mid-agent delays that agent by at most this much.
    lock_ttl_s: float = 60.0
    # The gateway client's key ring, to prove an imported key before it is stored.
    keys: KeyTrial | None = None


@dataclass(frozen=True)
class JobSubmission:
    job_id: str
    total: int
    to_dispatch: list[str]
    already_active: int


def _json_safe(value: Any) -> Any:
    """A refused manifest as the JSON column can hold it: YAML gives Decimals, dates, int keys."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


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
                    manifest=_json_safe(data)
                    if isinstance(data, dict)
                    else {"raw": repr(data)[:2000]},
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
                s.add(_agent_row(p.agent_id, manifest, p.group, now, job_id))
            elif agent.status == AgentStatus.FAILED:
                # Cleaned up before; a new run of the manifest tries it afresh.
                agent.status, agent.steps_done, agent.failure_reason, agent.updated_at = (
                    AgentStatus.PROVISIONING,
                    [],
                    None,
                    now,
                )
                agent.extra = {**agent.extra, "spec": _spec(manifest, p.group, job_id)}
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


def _spec(manifest: FleetManifest, group: AgentGroup, job_id: str) -> dict[str, Any]:
    # The job id names the idempotency keys of the agent's money moves.
    return {
        "group": group.model_dump(mode="json"),
        "fleet": manifest.fleet,
        "environment": manifest.environment,
        "job_id": job_id,
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


def _agent_row(
    agent_id: str, manifest: FleetManifest, group: AgentGroup, now: datetime, job_id: str
) -> Agent:
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
        extra={"spec": _spec(manifest, group, job_id)},
        created_at=now,
        updated_at=now,
    )


# ---------------------------------------------------------------- one agent


class StepRefused(Exception):
    """The step cannot be done for a reason a retry will not change; nothing to undo."""


class KeyLostInFlight(Exception):
    """The gateway registered the agent but its one answer with the key never reached us."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(
            f"the gateway registered {agent_id} but its answer, which alone carries the key, "
            "was lost (a worker died or the connection broke mid-call); the gateway mints no "
            "other key for an agent over its API: an operator issues one with the gateway's "
            f"key tooling and imports it with `fleet keys import {agent_id} KEY`"
        )


class TierMissing(Exception):
    """The agent's key is below the tier a step needs."""

    def __init__(self, step: str, needed: str, held: str, agent_id: str) -> None:
        self.step, self.needed, self.held = step, needed, held
        super().__init__(
            f"{STEP_LABEL.get(step, step)} needs a {needed} key; the agent holds a {held} key: "
            f"import one with `fleet keys import {agent_id} KEY`"
        )


@dataclass
class _Run:
    """One agent's pass through the steps: what the steps read and produce."""

    deps: ProvisioningDeps
    agent: Agent
    group: AgentGroup
    fleet: str
    environment: str
    job_id: str

    def idem(self, what: str) -> str:
        # Each compensation ends an attempt: the next one moves money under new keys.
        attempt = self.agent.extra.get("compensations", 0)
        return f"{self.job_id}:{self.agent.agent_id}:{attempt}:{what}"


def tier_rank(policy: Policy, tier: str) -> int:
    """A tier's place among the gateway's key tiers; one not listed counts as the lowest."""
    tiers = policy.provisioning.key_tiers
    return tiers.index(tier) if tier in tiers else -1


def key_tier(agent: Agent) -> str:
    return str(agent.extra.get("key", {}).get("tier", "free"))


def provision_agent(deps: ProvisioningDeps, agent_id: str) -> AgentStatus | None:
    """Run the remaining steps of one agent. Returns its status, or None when
    another worker holds it (a duplicate message; that worker finishes it)."""
    deps.check_loop()
    with deps.lock(f"provision:{agent_id}", deps.lock_ttl_s) as lease:
        if lease is None:
            return None
        agent = _load(deps, agent_id)
        if agent.status in (AgentStatus.ACTIVE, AgentStatus.FAILED, AgentStatus.AWAITING_KEY):
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
            spec.get("job_id", "job"),
        )
        policy = deps.policy
        for step in STEPS:
            if step in agent.steps_done:
                continue
            needed = STEP_TIER.get(step)
            values: dict[str, Any]
            if needed and tier_rank(policy, run.group.tier) < tier_rank(policy, needed):
                reason = (
                    f"skipped: {STEP_LABEL[step]} needs a {needed} key and group "
                    f"{run.group.id_prefix} is {run.group.tier}"
                )
                values = {"extra": {**agent.extra, "skipped": {**_skipped(agent), step: reason}}}
            else:
                try:
                    if needed and tier_rank(policy, key_tier(agent)) < tier_rank(policy, needed):
                        raise TierMissing(step, needed, key_tier(agent), agent_id)
                    values = _STEP_FUNCTIONS[step](run)
                except InsufficientTier as exc:
                    # Our record of the key's tier was wrong: the gateway is the judge.
                    return _tier_missing(
                        deps,
                        agent,
                        TierMissing(step, needed or "pro", key_tier(agent), agent_id),
                        str(exc),
                    )
                except TierMissing as exc:
                    return _tier_missing(deps, agent, exc, None)
                except KeyLostInFlight as exc:
                    return _await_key(deps, agent, str(exc))
                except StepRefused as exc:
                    return _fail_clean(deps, agent, f"step {step} refused: {exc}")
                except DB_UNREACHABLE:
                    # Our own records are away (the database restarting), not the step:
                    # nothing to undo; the task tries again once the database answers.
                    raise
                except Exception as exc:  # noqa: BLE001 - whatever broke, nothing half-made stays behind
                    reason = f"step {step} failed: {type(exc).__name__}: {exc}"
                    log.warning("agent %s: %s; compensating", agent_id, reason)
                    return _compensate(deps, agent, reason)
            agent.steps_done = [*agent.steps_done, step]
            values["steps_done"] = agent.steps_done
            if len(agent.steps_done) == len(STEPS):
                values |= {"status": AgentStatus.ACTIVE, "failure_reason": None}
            _save_patiently(deps, agent_id, values, lease)
            for key, value in values.items():
                setattr(agent, key, value)
            lease.renew()
        return AgentStatus.ACTIVE


def _save_patiently(
    deps: ProvisioningDeps, agent_id: str, values: dict[str, Any], lease: Lease
) -> None:
    """Record a finished step, waiting out a database that is away for a while.

    The step's work is done at the gateway and some of it cannot be asked for again
    (a registration's key is shown once): losing it to a database restart would fail
    the agent. So its record is retried for up to half the lock's TTL, the lock renewed.
    """
    deadline = time.monotonic() + deps.lock_ttl_s / 2
    wait = 0.2
    while True:
        try:
            _save(deps, agent_id, values)
            return
        except DB_UNREACHABLE:
            if time.monotonic() + wait > deadline:
                raise
            log.warning("agent %s: database unreachable; retrying the step's record", agent_id)
            time.sleep(wait)
            wait = min(wait * 2, 2.0)
            lease.renew()


def _skipped(agent: Agent) -> dict[str, str]:
    return dict(agent.extra.get("skipped", {}))


def _load(deps: ProvisioningDeps, agent_id: str) -> Agent:
    with deps.sessions() as s:
        agent = s.get(Agent, agent_id)
        if agent is None:
            raise LookupError(f"agent {agent_id} is not part of any provisioning job")
        s.expunge(agent)
    return agent


def _tier_missing(
    deps: ProvisioningDeps, agent: Agent, exc: TierMissing, gateway_said: str | None
) -> AgentStatus:
    reason = str(exc) + (f" (gateway: {gateway_said})" if gateway_said else "")
    if gateway_said:
        _save(
            deps,
            agent.agent_id,
            {"extra": {**agent.extra, "key": {**agent.extra.get("key", {}), "tier": exc.held}}},
        )
    if deps.policy.provisioning.on_missing_tier == "fail":
        _note_on_jobs(deps, agent.agent_id, reason)
        log.warning("agent %s: %s; compensating", agent.agent_id, reason)
        return _compensate(deps, agent, reason)
    return _await_key(deps, agent, reason)


def _await_key(deps: ProvisioningDeps, agent: Agent, reason: str) -> AgentStatus:
    _note_on_jobs(deps, agent.agent_id, reason)
    _save(deps, agent.agent_id, {"status": AgentStatus.AWAITING_KEY, "failure_reason": reason})
    log.info("agent %s waits for an imported key: %s", agent.agent_id, reason)
    return AgentStatus.AWAITING_KEY


def _note_on_jobs(deps: ProvisioningDeps, agent_id: str, reason: str) -> None:
    note = f"{agent_id}: {reason}"
    with write_session(deps.sessions) as s:
        jobs = s.scalars(
            select(ProvisioningJob).where(
                ProvisioningJob.job_id.in_(
                    select(JobAgent.job_id).where(JobAgent.agent_id == agent_id)
                )
            )
        )
        for job in jobs:
            if note not in job.problems:
                job.problems = [*job.problems, note]
                job.updated_at = deps.clock.now()


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


# Written before the registration is sent: an id that then already exists while we hold
# no key is ours, its key lost in flight, not another owner's.
REGISTER_SENT = "register_sent_at"


def _register(run: _Run) -> dict[str, Any]:
    deps, agent = run.deps, run.agent
    sent_before = REGISTER_SENT in agent.extra
    if not sent_before and not agent.api_key_encrypted:
        agent.extra = {**agent.extra, REGISTER_SENT: deps.clock.now().isoformat()}
        _save(deps, agent.agent_id, {"extra": agent.extra})
    try:
        result = deps.gateway.run(ops.register(agent.agent_id))
    except AlreadyExists as exc:
        if agent.api_key_encrypted:
            return {}  # ours, from an earlier run: its key is in our store
        # Sent by an earlier run that died, or by an earlier attempt of this call: ours.
        if sent_before or exc.attempts > 1:
            raise KeyLostInFlight(agent.agent_id) from None
        raise StepRefused(
            f"agent id {agent.agent_id} already exists at the gateway and we hold no key for it "
            f"(another owner's, or a key lost before it was stored): import its key with "
            f"`fleet keys import {agent.agent_id} KEY` and run the manifest again"
        ) from None
    now = deps.clock.now()
    return {
        "api_key_encrypted": deps.vault.encrypt(result.api_key.get_secret_value()),
        "key_rotated_at": now,
        "extra": {
            **agent.extra,
            "key": {"tier": result.tier, "source": "register", "since": now.isoformat()},
            "metadata": {
                "fleet": run.fleet,
                "environment": run.environment,
                "provisioned_at": now.isoformat(),
            },
        },
    }


def _identity(run: _Run) -> dict[str, Any]:
    deps, agent = run.deps, run.agent
    key = identity.held_or_new(agent, deps.vault)
    if key.to_store is not None:
        # Stored before the gateway hears of it: a retry sets this key, not another.
        agent.extra = {**agent.extra, identity.ENCRYPTED: key.to_store}
        _save(deps, agent.agent_id, {"extra": agent.extra})
    ours = key.public_hex
    deps.gateway.run(ops.set_identity_key(agent.agent_id, ours))
    held = deps.gateway.run(ops.get_identity(agent.agent_id))
    if not held.found or not identity.same_public_key(held.public_key, ours):
        raise NotFound(
            f"the gateway does not hold {agent.agent_id}'s identity key {ours[:16]}… "
            f"(it answered {held.public_key!r})",
            tool="get_identity",
            status=404,
        )
    now = deps.clock.now()
    return {
        "extra": {
            **agent.extra,
            "public_key": ours,
            "identity_key": {"source": "provisioning", "since": now.isoformat()},
        }
    }


def _funding(run: _Run) -> dict[str, Any]:
    """Bring the wallet to the manifest's balance. The move is planned (and saved)
    before it is sent, so a retry re-sends the same body under the same key."""
    deps, agent = run.deps, run.agent
    gateway, agent_id = deps.gateway, agent.agent_id
    if agent.extra.get("wallet_frozen"):
        # Frozen by an earlier run's compensation; this run provisions it again.
        gateway.run(ops.unfreeze_wallet(agent_id))
        agent.extra = {**agent.extra, "wallet_frozen": False}
        _save(deps, agent_id, {"extra": agent.extra})
    plan = agent.extra.get("funding_plan")
    if plan is None:
        balance = gateway.run(ops.get_balance(agent_id)).balance
        target = run.group.initial_balance
        plan = {
            "before": str(balance),
            "target": str(target),
            "op": "deposit" if target > balance else "withdraw",
            "amount": str(abs(target - balance)),
            "key": run.idem("funding"),
        }
        agent.extra = {**agent.extra, "funding_plan": plan}
        _save(deps, agent_id, {"extra": agent.extra})
    amount = Decimal(plan["amount"])
    if amount > 0:
        description = f"fleet {run.fleet}: initial balance {plan['target']}"
        if plan["op"] == "deposit":
            op = ops.deposit(agent_id, amount, description)
            new_balance = gateway.run(op, idempotency_key=plan["key"]).new_balance
        else:
            out = ops.withdraw(agent_id, amount, description)
            new_balance = gateway.run(out, idempotency_key=plan["key"]).new_balance
        plan = {**plan, "new_balance": str(new_balance)}
    return {"wallet_id": agent_id, "extra": {**agent.extra, "funding_plan": plan}}


def _budget(run: _Run) -> dict[str, Any]:
    cap = run.deps.policy.provisioning.budget_cap
    run.deps.gateway.run(
        ops.set_budget(
            run.agent.agent_id, cap.daily, cap.monthly, Decimal(str(cap.alert_threshold))
        )
    )
    budget = {"daily": str(cap.daily), "monthly": str(cap.monthly)}
    return {"extra": {**run.agent.extra, "budget_cap": budget}}


def _terms(run: _Run) -> SlaTerms:
    return run.deps.policy.sla_templates[run.group.sla_template]


def metric_claims(terms: SlaTerms) -> dict[str, Decimal]:
    """An SLA template's targets in the gateway's metric names and units
    (accuracy as a fraction, uptime in percent); cost per task has no name there."""
    claims = {
        "p99_latency_ms": Decimal(str(terms.p99_latency_ms)),
        "uptime": terms.uptime_pct,
        "accuracy": terms.accuracy_pct / 100,
    }
    assert set(claims) <= GATEWAY_METRICS
    return claims


def _metrics(run: _Run) -> dict[str, Any]:
    claims = metric_claims(_terms(run))
    run.deps.gateway.run(ops.submit_metrics(run.agent.agent_id, claims))
    submitted = {name: str(value) for name, value in claims.items()}
    return {"extra": {**run.agent.extra, "metric_claims": submitted}}


def _claims(run: _Run) -> dict[str, Any]:
    chain = run.deps.gateway.run(ops.build_claim_chain(run.agent.agent_id))
    return {
        "claim_chain_id": str(chain.chain_id),
        "extra": {**run.agent.extra, "merkle_root": chain.merkle_root},
    }


def _listing(run: _Run) -> dict[str, Any]:
    deps, agent, listing = run.deps, run.agent, run.deps.policy.provisioning.listing
    # Tagged with the agent id: a retry whose first answer was lost finds the
    # listing instead of making a second one (the gateway has no idempotency here).
    found = deps.gateway.run(ops.search_services(tags=(agent.agent_id,), limit=1)).services
    if found:
        return {"service_id": found[0].id}
    pricing = run.group.pricing
    cost = pricing.get(listing.price_name, next(iter(pricing.values()), Decimal("0.00")))
    service = deps.gateway.run(
        ops.register_service(
            provider_id=agent.agent_id,
            name=agent.agent_id,
            description=(
                f"{run.group.id_prefix} agent of fleet {run.fleet} ({run.environment}): "
                + ", ".join(agent.capabilities)
            ),
            category=listing.category,
            tools=list(agent.capabilities),
            tags=[*agent.capabilities, run.fleet, agent.agent_id],
            endpoint=listing.endpoint.format(agent_id=agent.agent_id),
            pricing={"model": "per_call", "cost": cost},
        )
    )
    return {"service_id": service.id}


def _sla(run: _Run) -> dict[str, Any]:
    deps, agent = run.deps, run.agent
    sla_id = f"sla-{agent.agent_id}"
    with write_session(deps.sessions) as s:
        if s.get(SlaContract, sla_id) is None:
            s.add(
                SlaContract(
                    sla_id=sla_id,
                    agent_id=agent.agent_id,
                    template=run.group.sla_template,
                    terms=_terms(run).model_dump(mode="json"),
                    created_at=deps.clock.now(),
                )
            )
    return {}


def _audit(run: _Run) -> dict[str, Any]:
    agent = run.agent
    run.deps.audit(
        actor=ACTOR,
        action="provision_agent",
        subject=agent.agent_id,
        # Derived, not random: a worker killed after sending the entry and before
        # recording the step sends it again, and the log keeps it once.
        event_id=hashlib.sha256(run.idem("audit").encode()).hexdigest()[:32],
        details={
            "fleet": run.fleet,
            "environment": run.environment,
            "job_id": run.job_id,
            "group_tier": run.group.tier,
            "key_tier": key_tier(agent),
            "public_key": agent.extra.get("public_key"),
            "wallet_id": agent.wallet_id,
            "initial_balance": str(run.group.initial_balance),
            "claim_chain_id": agent.claim_chain_id,
            "service_id": agent.service_id,
            "sla_template": run.group.sla_template,
            "trust_claims": [c.model_dump(exclude_none=True) for c in run.group.trust_claims],
            "skipped": _skipped(agent),
        },
    )
    return {}


def _health(run: _Run) -> dict[str, Any]:
    gateway, agent_id = run.deps.gateway, run.agent.agent_id
    identity = gateway.run(ops.get_identity(agent_id))
    if not identity.found:
        raise NotFound(f"the gateway lost the identity of {agent_id}", tool="get_identity")
    balance = gateway.run(ops.get_balance(agent_id)).balance
    budget = gateway.run(ops.get_budget(agent_id))
    first = {
        "identity_found": True,
        "balance": str(balance),
        "daily_cap": str(budget.daily_cap),
        "cap_exceeded": budget.cap_exceeded,
        "at": run.deps.clock.now().isoformat(),
    }
    return {"extra": {**run.agent.extra, "first_health": first}}


_STEP_FUNCTIONS: dict[str, Callable[[_Run], dict[str, Any]]] = {
    "register": _register,
    "identity": _identity,
    "funding": _funding,
    "budget": _budget,
    "metrics": _metrics,
    "claims": _claims,
    "listing": _listing,
    "sla": _sla,
    "audit": _audit,
    "health": _health,
}
assert tuple(_STEP_FUNCTIONS) == STEPS


# ---------------------------------------------------------------- imported keys


@dataclass(frozen=True)
class KeyImport:
    agent_id: str
    tier: str
    redispatch: bool  # the agent was waiting for this key: send it back to provisioning


def import_agent_key(
    deps: ProvisioningDeps, agent_id: str, api_key: str, imported_by: str
) -> KeyImport:
    """Hold an operator-minted key for an agent, once a gateway read with that
    key proved it is the agent's and live, and the admin key listing named its tier."""
    if deps.keys is None:
        raise RuntimeError("importing a key needs the gateway client's key ring in the deps")
    if not api_key.startswith("a2a_") or len(api_key) > 200:
        raise ValueError("not a gateway API key: it must look like a2a_<tier>_<hex>")
    agent = _load(deps, agent_id)
    if agent.status in (AgentStatus.RETIRED, AgentStatus.RETIRING):
        raise ValueError(f"agent {agent_id} is {agent.status}: it takes no new key")
    with deps.keys.trying(agent_id, api_key):
        # Own-agent only: answers for this agent's wallet only with this agent's key.
        deps.gateway.run(ops.get_balance(agent_id, auth=Auth.own(agent_id)))
    tier = _tier_of(deps, agent_id, api_key)
    now = deps.clock.now()
    waiting = agent.status == AgentStatus.AWAITING_KEY
    previous = agent.extra.get("key", {})
    held = list(agent.extra.get("held_keys", []))
    if agent.api_key_encrypted:
        # Still valid at the gateway: retirement rotates it away too.
        held.append({"key_encrypted": agent.api_key_encrypted, "tier": previous.get("tier")})
    values: dict[str, Any] = {
        "api_key_encrypted": deps.vault.encrypt(api_key),
        "key_rotated_at": now,
        "extra": {
            **agent.extra,
            "key": {"tier": tier, "source": "import", "since": now.isoformat(), "by": imported_by},
            "held_keys": held,
        },
    }
    if waiting:
        values |= {"status": AgentStatus.PROVISIONING, "failure_reason": None}
    _save(deps, agent_id, values)
    deps.audit(
        actor=ACTOR,
        action="import_key",
        subject=agent_id,
        details={"tier": tier, "previous_tier": previous.get("tier"), "by": imported_by},
    )
    return KeyImport(agent_id, tier, waiting)


def export_identity_key(deps: ProvisioningDeps, agent_id: str, exported_by: str) -> str:
    """The agent's identity private key (64 hex) for its deployment; audited.

    NoIdentityKey if we hold none (an agent provisioned before identity keys).
    """
    agent = _load(deps, agent_id)
    private = identity.private_key_of(agent, deps.vault)
    deps.audit(
        actor=ACTOR,
        action="export_identity_key",
        subject=agent_id,
        details=identity.export_record(agent, exported_by),
    )
    return private


def _tier_of(deps: ProvisioningDeps, agent_id: str, api_key: str) -> str:
    # The gateway lists keys by the first 8 hex digits of their SHA3-256.
    prefix = hashlib.sha3_256(api_key.encode()).hexdigest()[:8]
    for info in deps.gateway.run(ops.list_keys(agent_id)).keys:
        if info.key_hash_prefix == prefix and info.agent_id == agent_id:
            if info.revoked:
                raise ValueError(f"that key of {agent_id} is revoked at the gateway")
            return str(info.tier)
    raise ValueError(f"the gateway's key list has no such key for {agent_id}")


def awaiting_key(sessions: sessionmaker[Session], limit: int = 1000) -> list[str]:
    with sessions() as s:
        return list(
            s.scalars(
                select(Agent.agent_id)
                .where(Agent.status == AgentStatus.AWAITING_KEY)
                .order_by(Agent.agent_id)
                .limit(limit)
            )
        )


# ---------------------------------------------------------------- compensation

IDENTITY_REMAINS = "the identity cannot be deleted at the gateway; it remains there"


def _fail_clean(deps: ProvisioningDeps, agent: Agent, reason: str) -> AgentStatus:
    """Failed before anything of ours existed at the gateway: nothing to undo there."""
    _save(deps, agent.agent_id, {"status": AgentStatus.FAILED, "failure_reason": reason})
    _note_on_jobs(deps, agent.agent_id, reason)
    deps.audit(
        actor=ACTOR,
        action="provisioning_refused",
        subject=agent.agent_id,
        details={"reason": reason},
    )
    return AgentStatus.FAILED


def _compensate(deps: ProvisioningDeps, agent: Agent, reason: str) -> AgentStatus:
    """Undo what the gateway holds for this agent; FAILED when clean, else COMPENSATING."""
    _save(deps, agent.agent_id, {"status": AgentStatus.COMPENSATING, "failure_reason": reason})
    agent.extra = _load(deps, agent.agent_id).extra
    undone: dict[str, Any] = {}
    try:
        if agent.service_id:
            undone["listing"] = deactivate_listing(deps.gateway, agent.service_id)
        if "register" in agent.steps_done:
            job = agent.extra.get("spec", {}).get("job_id", "job")
            attempt = agent.extra.get("compensations", 0)
            key = f"{job}:{agent.agent_id}:{attempt}:compensate"
            undone["swept"] = str(sweep_to_treasury(deps, agent, key))
            freeze(deps.gateway, agent.agent_id)
            undone["wallet_frozen"] = True
    except GatewayError as exc:
        log.warning("agent %s: compensation incomplete (%s); will resume", agent.agent_id, exc)
        return AgentStatus.COMPENSATING
    extra = {
        **agent.extra,
        "wallet_frozen": bool(undone.get("wallet_frozen")),
        "compensations": agent.extra.get("compensations", 0) + 1,
        "compensation": {**undone, "identity": IDENTITY_REMAINS},
    }
    extra.pop("funding_plan", None)
    extra.pop("sweep", None)
    # The key is kept: the identity stays at the gateway and a later run goes on with it.
    _save(
        deps,
        agent.agent_id,
        {"status": AgentStatus.FAILED, "steps_done": [], "service_id": None, "extra": extra},
    )
    _note_on_jobs(deps, agent.agent_id, reason)
    deps.audit(
        actor=ACTOR,
        action="compensate_agent",
        subject=agent.agent_id,
        details={
            "reason": reason,
            "steps_undone": list(agent.steps_done),
            **undone,
            "identity": IDENTITY_REMAINS,
        },
    )
    return AgentStatus.FAILED


def deactivate_listing(gateway: Gateway, service_id: str) -> str:
    try:
        return str(gateway.run(ops.deactivate_service(service_id)).status)
    except NotFound:
        return "gone"


def freeze(gateway: Gateway, agent_id: str) -> None:
    try:
        gateway.run(ops.freeze_wallet(agent_id))
    except NotFound:
        pass  # no wallet


def sweep_to_treasury(deps: ProvisioningDeps, agent: Agent, key_base: str) -> Decimal:
    """Move the whole balance to the treasury agent: admin withdraw, then deposit.

    Not atomic at the gateway, so the amount is saved before either call and a
    resumed sweep replays both under the same idempotency keys: a withdraw that
    went through is answered from the gateway's record, never taken twice, and
    the deposit that follows it is never lost.
    """
    gateway, agent_id = deps.gateway, agent.agent_id
    treasury = deps.policy.provisioning.treasury_wallet
    plan = agent.extra.get("sweep")
    if plan is None:
        try:
            balance = gateway.run(ops.get_balance(agent_id, auth=Auth.ADMIN)).balance
        except NotFound:
            return Decimal("0.00")
        plan = {"amount": str(balance), "key": key_base, "withdrawn": False}
        agent.extra = {**agent.extra, "sweep": plan}
        _save(deps, agent_id, {"extra": agent.extra})
    amount = Decimal(plan["amount"])
    if amount <= 0:
        return amount
    if not plan["withdrawn"]:
        withdraw = ops.withdraw(agent_id, amount, f"sweep to treasury {treasury}", auth=Auth.ADMIN)
        try:
            gateway.run(withdraw, idempotency_key=f"{key_base}:sweep-out")
        except WalletFrozen:
            gateway.run(ops.unfreeze_wallet(agent_id))
            gateway.run(withdraw, idempotency_key=f"{key_base}:sweep-out")
        plan = {**plan, "withdrawn": True}
        agent.extra = {**agent.extra, "sweep": plan}
        _save(deps, agent_id, {"extra": agent.extra})
    gateway.run(
        ops.deposit(treasury, amount, f"swept from {agent_id}", auth=Auth.ADMIN),
        idempotency_key=f"{key_base}:sweep-in",
    )
    return amount


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


def interrupted_agents(sessions: sessionmaker[Session], limit: int = 10000) -> list[str]:
    """Every agent provisioning or compensating, however recently it moved: at a
    worker's start these are the work a dead worker may have held."""
    with sessions() as s:
        return list(
            s.scalars(
                select(Agent.agent_id)
                .where(Agent.status.in_([AgentStatus.PROVISIONING, AgentStatus.COMPENSATING]))
                .order_by(Agent.agent_id)
                .limit(limit)
            )
        )


def stall_cutoff(clock: Clock, stall_s: float) -> datetime:
    return clock.now() - timedelta(seconds=stall_s)


def iter_chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def add_agents(
    deps: ProvisioningDeps,
    *,
    fleet: str,
    environment: str,
    group: AgentGroup,
    indices: list[int],
    job_id: str,
    submitted_by: str,
) -> JobSubmission:
    """A job growing one group by the agents at ``indices`` (the autoscaler's scale-up).

    The same group spec as the manifest that made the segment, so the new agents are
    its siblings; recorded as a job of its own (a manifest of that group with
    ``count=len(indices)``). Idempotent on ``job_id``: a second call dispatches again
    the job's agents that are not active yet, and creates none.
    """
    if deps.is_frozen(fleet):
        raise ProvisioningFrozen(f"provisioning is frozen for fleet {fleet!r}")
    manifest = FleetManifest.model_validate(
        {
            "fleet": fleet,
            "environment": environment,
            "agents": [{**group.model_dump(mode="json"), "count": len(indices)}],
        }
    )
    now = deps.clock.now()
    with write_session(deps.sessions) as s:
        if s.get(ProvisioningJob, job_id) is not None:
            linked = list(s.scalars(select(JobAgent.agent_id).where(JobAgent.job_id == job_id)))
            statuses = {
                str(a): str(st)
                for a, st in s.execute(
                    select(Agent.agent_id, Agent.status).where(Agent.agent_id.in_(linked))
                )
            }
            pending = [a for a in linked if statuses.get(a) != AgentStatus.ACTIVE]
            return JobSubmission(job_id, len(linked), pending, len(linked) - len(pending))
        s.add(_job_row(job_id, manifest, now, submitted_by, JobState.RUNNING, []))
        ids = [planned_agent_id(fleet, environment, group.id_prefix, i) for i in indices]
        taken = set(s.scalars(select(Agent.agent_id).where(Agent.agent_id.in_(ids))))
        if taken:
            raise ValueError(f"agents already exist: {', '.join(sorted(taken))}")
        s.add_all(_agent_row(a, manifest, manifest.agents[0], now, job_id) for a in ids)
        s.flush()
        s.add_all(JobAgent(job_id=job_id, agent_id=a) for a in ids)
    return JobSubmission(job_id, len(ids), ids, 0)
