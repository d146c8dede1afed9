"""The compliance sweep and single-agent checks: samples in, episodes moved, escalation started.

A sweep lists every active agent (and any other agent with an open episode,
so a paused agent's episode can still close) and splits them into batches of
``sla.batch_size``; each batch is one queue message. A batch reads its agents'
metrics snapshots in one Redis round trip, judges each agent's SLA terms on
its snapshot (the gateway holds no SLA terms, see :mod:`fleet.sla.compliance`),
and then applies each agent's sample on its own: one agent's failure is logged and counted, never
the batch's. Only agents whose episode moves touch the database; the last
sample of every agent goes to Redis (``fleet:sla:sample:{agent}``).
Progress of a sweep is a Redis hash (``fleet:sla:sweep:{id}``).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import redis
from sqlalchemy import CompoundSelect, select, union
from sqlalchemy.orm import Session, sessionmaker

from config.policy import Policy
from config.settings import SlaSettings
from fleet import audit
from fleet.audit.events import ApprovalState, Article
from fleet.clock import Clock
from fleet.escalation.engine import EngineDeps, Sender, evaluate
from fleet.hotstate import KEY_PREFIX, read_hash, read_str, write_hash
from fleet.monitoring.snapshot import Snapshot, snapshot_key
from fleet.sla.compliance import Sample, Verdict, decide
from fleet.sla.contracts import active_contracts, contract_for
from fleet.sla.episodes import (
    Applied,
    EpisodeView,
    OpenContext,
    Transition,
    acknowledge,
    apply_sample,
    close_episode,
    open_episode_ids,
)
from fleet.sla.models import SlaEpisode
from fleet.storage.records import Agent, AgentStatus

log = logging.getLogger(__name__)

ACTOR = "fleet-commander/sla"
CHECKED = (AgentStatus.ACTIVE, AgentStatus.PAUSED)
SAMPLE_TTL_S = 7 * 86400
SWEEP_TTL_S = 86400
LAST_SWEEP_KEY = f"{KEY_PREFIX}sla:sweep:last"


def sample_key(agent_id: str) -> str:
    return f"{KEY_PREFIX}sla:sample:{agent_id}"


def sweep_key(sweep_id: str) -> str:
    return f"{KEY_PREFIX}sla:sweep:{sweep_id}"


@dataclass
class SlaDeps:
    sessions: sessionmaker[Session]
    redis: redis.Redis
    policy: Policy
    settings: SlaSettings
    clock: Clock
    send: Sender
    record: Callable[..., Any] = audit.record

    def engine(self) -> EngineDeps:
        return EngineDeps(
            self.sessions, self.policy.escalation, self.clock, self.send, redis=self.redis
        )


@dataclass
class BatchResult:
    checked: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    transitions: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    dispatched: int = 0
    episodes: dict[str, str] = field(default_factory=dict)  # agent → episode touched

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "verdicts": dict(self.verdicts),
            "transitions": dict(self.transitions),
            "failed": self.failed[:50],
            "failed_count": len(self.failed),
            "dispatched": self.dispatched,
        }


# ------------------------------------------------------------------------------ the sweep


def sweep_targets(sessions: sessionmaker[Session]) -> list[str]:
    """Active agents, and any agent with an open episode (a paused one's can still close)."""
    stmt: CompoundSelect[str | None] = union(
        select(Agent.agent_id).where(Agent.status == AgentStatus.ACTIVE),
        select(SlaEpisode.open_agent).where(SlaEpisode.open_agent.is_not(None)),
    )
    with sessions() as s:
        return sorted(str(a) for a in s.scalars(stmt))


@dataclass(frozen=True)
class SweepPlan:
    sweep_id: str
    total: int
    batches: list[list[str]]


def plan_sweep(deps: SlaDeps, *, guard_s: float | None = None) -> SweepPlan | None:
    """Split the targets into batches and record the sweep; None if one started within guard_s."""
    if guard_s and not deps.redis.set(
        f"{KEY_PREFIX}sla:sweep-guard", "1", nx=True, px=int(guard_s * 1000)
    ):
        return None
    agents = sweep_targets(deps.sessions)
    size = deps.settings.batch_size
    batches = [agents[i : i + size] for i in range(0, len(agents), size)]
    sweep_id = uuid.uuid4().hex
    pipe = deps.redis.pipeline(transaction=False)
    pipe.hset(
        sweep_key(sweep_id),
        mapping={
            "total": len(agents),
            "batches": len(batches),
            "done": 0,
            "failed": 0,
            "breaches": 0,
            "started_at": deps.clock.now().timestamp(),
        },
    )
    pipe.expire(sweep_key(sweep_id), SWEEP_TTL_S)
    pipe.set(LAST_SWEEP_KEY, sweep_id, ex=SWEEP_TTL_S)
    pipe.execute()
    if not agents:
        deps.redis.hset(sweep_key(sweep_id), "finished_at", deps.clock.now().timestamp())
    return SweepPlan(sweep_id, len(agents), batches)


def sweep_progress(r: redis.Redis, sweep_id: str | None = None) -> dict[str, Any] | None:
    sweep_id = sweep_id or read_str(r, LAST_SWEEP_KEY)
    if not sweep_id:
        return None
    raw = read_hash(r, sweep_key(sweep_id))
    if not raw:
        return None
    out: dict[str, Any] = {"sweep_id": sweep_id}
    for name, value in raw.items():
        out[name] = float(value) if name.endswith("_at") else int(value)
    if "finished_at" in out:
        out["duration_s"] = round(out["finished_at"] - out["started_at"], 3)
    return out


# ------------------------------------------------------------------------------ checking a batch


def check_batch(
    deps: SlaDeps,
    agent_ids: Sequence[str],
    *,
    sweep_id: str | None = None,
    source: str = "sweep",
    counterparty: str | None = None,
    amount: str | None = None,
) -> BatchResult:
    """Check these agents now and move their episodes; start whatever escalation came due.

    A new episode's counterparty (for whom tier 3 files a dispute) is the one
    given here, else the agent record's ``extra["counterparty"]``, else none.
    """
    ids = list(dict.fromkeys(agent_ids))
    result = BatchResult()
    now = deps.clock.now()
    snapshots = _snapshots(deps.redis, ids)
    with deps.sessions() as s:
        # An agent serving one counterparty names it in its record (extra.counterparty).
        agents = {
            a.agent_id: (
                a.fleet,
                str(a.status),
                a.sla_template,
                (a.extra or {}).get("counterparty"),
            )
            for a in s.scalars(select(Agent).where(Agent.agent_id.in_(ids)))
        }
        contracts = active_contracts(s, ids)
        open_now = open_episode_ids(s, ids)
    samples: list[Sample] = []
    with audit.batch():
        for agent_id in ids:
            try:
                info = agents.get(agent_id)
                if info is None:
                    result.failed.append(agent_id)
                    log.warning("sla check: %s is not a known agent", agent_id)
                    continue
                fleet, status, template, serving = info
                if status not in CHECKED:
                    if agent_id in open_now:
                        applied = close_episode(
                            deps.sessions, open_now[agent_id], f"agent {status}", now
                        )
                        _after(deps, result, agent_id, applied, None)
                    continue
                contract = contract_for(deps.policy, template, contracts.get(agent_id))
                sample = decide(
                    agent_id,
                    now,
                    snapshots.get(agent_id),
                    contract.terms,
                    deps.settings.snapshot_max_age_s,
                )
                result.checked += 1
                result.verdicts[sample.verdict.value] += 1
                samples.append(sample)
                context = OpenContext(
                    fleet, contract.sla_id, source, counterparty or serving, _amount(amount)
                )
                applied = apply_sample(
                    deps.sessions,
                    sample,
                    context,
                    recovery_samples=deps.policy.escalation.recovery_samples,
                    known_open=agent_id in open_now,
                )
                _after(deps, result, agent_id, applied, sample)
            except Exception:  # noqa: BLE001 - each agent is its own unit of failure
                log.exception("sla check of %s failed", agent_id)
                result.failed.append(agent_id)
    _cache_samples(deps.redis, samples)
    if result.episodes:
        try:
            result.dispatched = len(evaluate(deps.engine(), result.episodes.values()))
        except Exception:  # noqa: BLE001 - the escalation tick evaluates them again within a minute
            log.exception("escalation after the checks failed; the tick will retry")
    if sweep_id:
        _progress(deps, sweep_id, len(ids), result)
    return result


def evaluate_agent(
    deps: SlaDeps,
    agent_id: str,
    source: str,
    *,
    counterparty: str | None = None,
    amount: str | None = None,
) -> dict[str, Any]:
    """Check one agent now (an alert handed it over); open an episode if it is in breach."""
    result = check_batch(deps, [agent_id], source=source, counterparty=counterparty, amount=amount)
    out = result.as_dict()
    out["agent_id"] = agent_id
    out["episode_id"] = result.episodes.get(agent_id)
    return out


def _after(
    deps: SlaDeps, result: BatchResult, agent_id: str, applied: Applied, sample: Sample | None
) -> None:
    result.transitions[applied.transition.value] += 1
    ep = applied.episode
    if ep is None:
        return
    result.episodes[agent_id] = ep.episode_id
    if applied.transition is Transition.OPENED:
        _audit_episode(
            deps,
            "sla_episode_opened",
            ep,
            {
                "breached_terms": list(ep.breached_terms),
                "opened_by": ep.opened_by,
                "source": sample.source if sample else None,
                "note": sample.note if sample else "",
                "counterparty": ep.counterparty,
            },
        )
    elif applied.transition is Transition.CLOSED:
        _audit_episode(
            deps,
            "sla_episode_closed",
            ep,
            {
                "breached_terms": list(ep.breached_terms),
                "reason": ep.close_reason,
                "violation_s": int(ep.duration_s(deps.clock.now())),
                "weight_restored": applied.restored_weight,
            },
        )


def _audit_episode(deps: SlaDeps, action: str, ep: EpisodeView, details: dict[str, Any]) -> None:
    deps.record(
        actor=ACTOR,
        action=action,
        subject=ep.agent_id,
        fleet=ep.fleet,
        details={"episode_id": ep.episode_id, **details},
        clock=deps.clock,
        event_id=f"{'sla-open' if action.endswith('opened') else 'sla-close'}-{ep.episode_id}",
    )


def acknowledge_episode(
    sessions: sessionmaker[Session],
    policy: Policy,
    clock: Clock,
    episode_id: str,
    by: str,
    note: str = "",
    record: Callable[..., Any] = audit.record,
    *,
    attribution: Mapping[str, Any] | None = None,
) -> EpisodeView:
    """An operator acknowledges: tiers 3-4 wait ``ack_timeout_s``; recorded as human
    oversight (Art. 14). With ``attribution`` (an authenticated principal's fields), ``by``
    is that principal's id and is recorded as it is."""
    ep = acknowledge(sessions, episode_id, by, clock.now(), policy.escalation.ack_timeout_s)
    record(
        actor=(by if attribution is not None else f"user:{by.strip()}")[:128],
        action="sla_episode_acknowledged",
        subject=ep.agent_id,
        fleet=ep.fleet,
        details={
            "episode_id": ep.episode_id,
            "ack_until": ep.ack_until,
            "note": note,
            "holds_tiers": list(policy.escalation.ack_pauses_tiers),
            **(attribution or {}),
        },
        article=Article.HUMAN_OVERSIGHT,
        approval=ApprovalState.NONE,
        clock=clock,
    )
    return ep


def open_episode_of(sessions: sessionmaker[Session], agent_id: str) -> str | None:
    with sessions() as s:
        return open_episode_ids(s, [agent_id]).get(agent_id)


def _amount(amount: str | None) -> str | None:
    if amount is None:
        return None
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise ValueError(f"amount must be a decimal string, not {amount!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"amount must be a non-negative decimal, not {amount!r}")
    return format(value.quantize(Decimal("0.01")), "f")


def _snapshots(r: redis.Redis, agent_ids: Sequence[str]) -> dict[str, Snapshot]:
    pipe = r.pipeline(transaction=False)
    for agent_id in agent_ids:
        pipe.hgetall(snapshot_key(agent_id))
    out = {}
    for agent_id, raw in zip(agent_ids, pipe.execute(), strict=True):
        if raw:
            try:
                out[agent_id] = Snapshot.from_redis(raw)
            except (ValueError, TypeError) as exc:
                log.warning("unreadable snapshot of %s ignored: %s", agent_id, exc)
    return out


def _cache_samples(r: redis.Redis, samples: Sequence[Sample]) -> None:
    if not samples:
        return
    pipe = r.pipeline(transaction=False)
    for sample in samples:
        key = sample_key(sample.agent_id)
        write_hash(pipe, key, sample.to_redis())
        pipe.expire(key, SAMPLE_TTL_S)
    pipe.execute()


def last_sample(r: redis.Redis, agent_id: str) -> dict[str, str] | None:
    raw = read_hash(r, sample_key(agent_id))
    return dict(raw) if raw else None


def _progress(deps: SlaDeps, sweep_id: str, count: int, result: BatchResult) -> None:
    key = sweep_key(sweep_id)
    pipe = deps.redis.pipeline(transaction=False)
    pipe.hincrby(key, "done", count)
    pipe.hincrby(key, "failed", len(result.failed))
    pipe.hincrby(key, "breaches", result.verdicts.get(Verdict.BREACH.value, 0))
    pipe.hget(key, "total")
    done, _, _, total = pipe.execute()
    if total is not None and int(done) >= int(total):
        deps.redis.hsetnx(key, "finished_at", deps.clock.now().timestamp())
