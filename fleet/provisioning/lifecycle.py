"""After provisioning: key rotation, tier upgrade requests, retirement.

Retirement order (operations rules §5, on what the gateway allows): stop
routing → drain in-flight work (up to the drain timeout) → settle SLAs (ours:
the gateway has no SLA object) → rotate the key and discard the new one, so
nobody holds a working key → deactivate the listing → sweep the funds to the
treasury → freeze the wallet → final snapshot from the gateway's reads and
an audit entry. The gateway cannot delete an identity: the record says
"retired; identity remains at the gateway". Each finished stage is recorded
on the agent, so an interrupted retirement resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from fleet.budgets.models import SpendEntry
from fleet.gateway import operations as ops
from fleet.gateway.errors import AuthError
from fleet.provisioning.pipeline import (
    ACTOR,
    IDENTITY_REMAINS,
    ProvisioningDeps,
    deactivate_listing,
    freeze,
    key_tier,
    sweep_to_treasury,
)
from fleet.sla.models import SlaEpisode
from fleet.storage.db import write_session
from fleet.storage.records import Agent, AgentStatus, SlaContract

log = logging.getLogger(__name__)

RETIRE_STAGES = (
    "stop_routing",
    "drain",
    "settle_sla",
    "discard_key",
    "delist",
    "sweep",
    "freeze",
    "final_snapshot",
)
RETIRED_NOTE = "retired; identity remains at the gateway"


class LifecycleError(Exception):
    """The agent is not in a state that allows this (unknown, not active, …)."""


# ---------------------------------------------------------------- keys


def keys_due(deps: ProvisioningDeps, limit: int = 1000) -> list[str]:
    cutoff = deps.clock.now() - timedelta(days=deps.policy.provisioning.key_rotation_days)
    with deps.sessions() as s:
        return list(
            s.scalars(
                select(Agent.agent_id)
                .where(Agent.status == AgentStatus.ACTIVE, Agent.key_rotated_at < cutoff)
                .order_by(Agent.key_rotated_at)
                .limit(limit)
            )
        )


def rotate_key(deps: ProvisioningDeps, agent_id: str) -> bool:
    """A new key for the agent (admin + its current key); the old one works on for
    the gateway's grace window and is kept until then. False when another worker
    is rotating it, or it is not due."""
    with deps.lock(f"rotate:{agent_id}", 60) as lease:
        if lease is None:
            return False
        agent = _agent(deps, agent_id)
        if agent.status != AgentStatus.ACTIVE or not agent.api_key_encrypted:
            raise LifecycleError(f"agent {agent_id} is not active with a key we hold")
        cutoff = deps.clock.now() - timedelta(days=deps.policy.provisioning.key_rotation_days)
        rotated_at = agent.key_rotated_at
        if rotated_at is not None and rotated_at.replace(tzinfo=cutoff.tzinfo) > cutoff:
            return False  # a redelivered message: already rotated
        result = deps.gateway.run(ops.rotate_key(deps.vault.decrypt(agent.api_key_encrypted)))
        now = deps.clock.now()
        grace_until = _epoch(result.grace_expires_at) if result.grace_expires_at else now
        held = [k for k in agent.extra.get("held_keys", []) if not _expired(k, now)]
        held.append(
            {
                "key_encrypted": agent.api_key_encrypted,
                "tier": key_tier(agent),
                "valid_until": grace_until.isoformat(),
            }
        )
        _update(
            deps,
            agent_id,
            api_key_encrypted=deps.vault.encrypt(result.new_key.get_secret_value()),
            key_rotated_at=now,
            extra={
                **agent.extra,
                "key": {
                    **agent.extra.get("key", {}),
                    "tier": result.tier,
                    "since": now.isoformat(),
                },
                "held_keys": held,
            },
        )
    deps.audit(
        actor=ACTOR,
        action="rotate_key",
        subject=agent_id,
        details={
            "tier": result.tier,
            "grace_period_s": str(result.grace_period_seconds),
            "old_key_valid_until": grace_until.isoformat(),
        },
    )
    return True


def _epoch(value: datetime | float) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(value), UTC)


def _expired(held: dict[str, Any], now: datetime) -> bool:
    until = held.get("valid_until")
    return until is not None and datetime.fromisoformat(until) <= now.astimezone(UTC)


# ---------------------------------------------------------------- tier upgrades


DAYS_PER_MONTH = 30


@dataclass(frozen=True)
class UpgradePlan:
    """A tier change's cost impact: the policy's monthly tier prices (the gateway has no
    tier-change estimate, and no API that grants a tier) plus what the agent really
    spends, its last day in the spend ledger × 30, on both sides.

    ``current_monthly_cost`` = current tier price + usage; ``projected_monthly_cost`` =
    new tier price + usage, with usage = ``daily_cost`` × 30.
    """

    agent_id: str
    current_tier: str
    new_tier: str
    current_monthly_cost: Decimal
    projected_monthly_cost: Decimal
    current_tier_price: Decimal = Decimal("0")
    new_tier_price: Decimal = Decimal("0")
    daily_cost: Decimal = Decimal("0")  # the ledger's actual spend over the last 24 h
    ledger_entries: int = 0

    @property
    def increase(self) -> Decimal:
        if self.current_monthly_cost <= 0:
            return Decimal("Infinity") if self.projected_monthly_cost > 0 else Decimal("0")
        return (self.projected_monthly_cost - self.current_monthly_cost) / self.current_monthly_cost

    def needs_approval(self, threshold: float) -> bool:
        return self.increase > Decimal(str(threshold))

    def as_details(self) -> dict[str, str]:
        return {
            "current_tier": self.current_tier,
            "new_tier": self.new_tier,
            "current_monthly_cost": str(self.current_monthly_cost),
            "projected_monthly_cost": str(self.projected_monthly_cost),
            "current_tier_price": str(self.current_tier_price),
            "new_tier_price": str(self.new_tier_price),
            "ledger_daily_cost": str(self.daily_cost),
            "ledger_entries_24h": str(self.ledger_entries),
            "monthly_usage_cost": str(self.daily_cost * DAYS_PER_MONTH),
            "increase_pct": "inf"
            if self.increase.is_infinite()
            else str((self.increase * 100).quantize(Decimal("0.1"))),
        }


def plan_upgrade(deps: ProvisioningDeps, agent_id: str, new_tier: str) -> UpgradePlan:
    """Estimate the cost impact first (operations rules §5)."""
    agent = _active_agent(deps, agent_id)
    prices = deps.policy.provisioning.tier_prices
    if new_tier not in prices:
        raise LifecycleError(
            f"tier {new_tier!r} has no price in provisioning.tier_prices "
            f"(known: {', '.join(prices)})"
        )
    current = key_tier(agent)
    if current == new_tier:
        raise LifecycleError(f"agent {agent_id} already holds a {new_tier} key")
    daily, entries = ledger_daily_cost(deps, agent_id)
    usage = daily * DAYS_PER_MONTH
    current_price, new_price = prices.get(current, Decimal("0")), prices[new_tier]
    return UpgradePlan(
        agent_id,
        current,
        new_tier,
        current_price + usage,
        new_price + usage,
        current_tier_price=current_price,
        new_tier_price=new_price,
        daily_cost=daily,
        ledger_entries=entries,
    )


def ledger_daily_cost(deps: ProvisioningDeps, agent_id: str) -> tuple[Decimal, int]:
    """The agent's real spend over the last 24 h (the spend ledger's actual amounts)."""
    since = deps.clock.now() - timedelta(days=1)
    with deps.sessions() as s:
        amounts = list(
            s.scalars(
                select(SpendEntry.actual).where(
                    SpendEntry.agent_id == agent_id, SpendEntry.settled_at >= since
                )
            )
        )
    return sum((Decimal(a) for a in amounts), Decimal("0")), len(amounts)


def upgrade_instructions(plan: UpgradePlan) -> str:
    return (
        f"The gateway grants no tier through its API: mint a {plan.new_tier} key for "
        f"{plan.agent_id} with the gateway's operator tooling, then "
        f"`fleet keys import {plan.agent_id} KEY`."
    )


def record_upgrade_request(
    deps: ProvisioningDeps, plan: UpgradePlan, approved_by: list[str]
) -> str:
    """Record the (approved, where needed) request; the tier changes when the operator
    imports a key of that tier. Returns what the operator must do."""
    agent = _agent(deps, plan.agent_id)
    request = {
        **plan.as_details(),
        "requested_at": deps.clock.now().isoformat(),
        "approved_by": approved_by,
        "status": "awaiting imported key",
    }
    _update(deps, plan.agent_id, extra={**agent.extra, "tier_request": request})
    deps.audit(
        actor=ACTOR,
        action="upgrade_tier_requested",
        subject=plan.agent_id,
        details={**plan.as_details(), "approved_by": ",".join(approved_by) or "not required"},
    )
    return upgrade_instructions(plan)


# ---------------------------------------------------------------- retirement


@dataclass
class RetireDeps:
    inflight: Callable[[str], int]  # work items still running on the agent
    sleep: Callable[[float], None] = time.sleep
    poll_s: float = 1.0


def retire_agent(deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str) -> str:
    """Run the remaining retirement stages; returns the agent's final status."""
    with deps.lock(f"retire:{agent_id}", deps.policy.scaling.drain_timeout_s + 120) as lease:
        if lease is None:
            return "held-by-another-worker"
        agent = _agent(deps, agent_id)
        if agent.status == AgentStatus.RETIRED:
            return AgentStatus.RETIRED
        if agent.status not in (AgentStatus.ACTIVE, AgentStatus.PAUSED, AgentStatus.RETIRING):
            raise LifecycleError(
                f"agent {agent_id} is {agent.status}; only active or paused agents retire"
            )
        done: list[str] = list(agent.extra.get("retire_stages", []))
        facts: dict[str, Any] = dict(agent.extra.get("retirement", {}))
        for stage in RETIRE_STAGES:
            if stage in done:
                continue
            facts.update(_RETIRE_FUNCS[stage](deps, rdeps, agent_id, reason) or {})
            done.append(stage)
            extra = {**_agent(deps, agent_id).extra, "retire_stages": done, "retirement": facts}
            values: dict[str, Any] = {"extra": extra}
            if stage == "stop_routing":
                values |= {"status": AgentStatus.RETIRING, "traffic_weight": "0"}
            _update(deps, agent_id, **values)
            lease.renew()
        _update(deps, agent_id, status=AgentStatus.RETIRED, failure_reason=RETIRED_NOTE)
    return AgentStatus.RETIRED


def _stop_routing(
    deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str
) -> dict[str, Any]:
    return {"reason": reason, "started_at": deps.clock.now().isoformat()}


def _drain(deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str) -> dict[str, Any]:
    deadline = time.monotonic() + deps.policy.scaling.drain_timeout_s
    while (left := rdeps.inflight(agent_id)) > 0 and time.monotonic() < deadline:
        rdeps.sleep(rdeps.poll_s)
    return {"drained": left <= 0, "abandoned_in_flight": max(left, 0)}


def _settle_sla(
    deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str
) -> dict[str, Any]:
    # The contracts and their violations are ours: the gateway has no SLA object.
    now = deps.clock.now()
    with write_session(deps.sessions) as s:
        episodes = list(s.scalars(select(SlaEpisode).where(SlaEpisode.agent_id == agent_id)))
        ended = cast(
            CursorResult[Any],
            s.execute(
                update(SlaContract)
                .where(SlaContract.agent_id == agent_id, SlaContract.ended_at.is_(None))
                .values(ended_at=now)
            ),
        )
    return {"sla_contracts_ended": ended.rowcount, "sla_violation_episodes": len(episodes)}


def _discard_key(
    deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str
) -> dict[str, Any]:
    """Rotate every key we hold and throw the new ones away: once the grace
    window ends no working key for the agent exists anywhere."""
    agent = _agent(deps, agent_id)
    tokens = [agent.api_key_encrypted] if agent.api_key_encrypted else []
    now = deps.clock.now()
    tokens += [k["key_encrypted"] for k in agent.extra.get("held_keys", []) if not _expired(k, now)]
    rotated = already = 0
    last_grace: str | None = None
    for token in tokens:
        try:
            result = deps.gateway.run(ops.rotate_key(deps.vault.decrypt(token)))
        except AuthError:
            already += 1  # revoked before (an earlier attempt, or its grace ran out)
            continue
        rotated += 1
        if result.grace_expires_at:
            last_grace = _epoch(result.grace_expires_at).isoformat()
    _update(
        deps,
        agent_id,
        api_key_encrypted=None,
        extra={**agent.extra, "held_keys": []},
    )
    return {"keys_discarded": rotated, "keys_already_dead": already, "keys_dead_after": last_grace}


def _delist(
    deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str
) -> dict[str, Any]:
    agent = _agent(deps, agent_id)
    if not agent.service_id:
        return {"listing": "none"}
    return {"listing": deactivate_listing(deps.gateway, agent.service_id)}


def _sweep(deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str) -> dict[str, Any]:
    agent = _agent(deps, agent_id)
    amount = sweep_to_treasury(deps, agent, f"retire:{agent_id}")
    return {"withdrawn": str(amount), "treasury": deps.policy.provisioning.treasury_wallet}


def _freeze(
    deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str
) -> dict[str, Any]:
    freeze(deps.gateway, agent_id)
    return {"wallet_frozen": True}


def _final_snapshot(
    deps: ProvisioningDeps, rdeps: RetireDeps, agent_id: str, reason: str
) -> dict[str, Any]:
    gateway = deps.gateway
    identity = gateway.run(ops.get_identity(agent_id))
    balance = gateway.run(ops.get_balance(agent_id)).balance
    usage = gateway.run(ops.get_usage(agent_id))
    snapshot = {
        "balance": str(balance),
        "total_calls": usage.total_calls,
        "total_cost": str(usage.total_cost),
        "identity_at_gateway": identity.found,
        "at": deps.clock.now().isoformat(),
    }
    deps.audit(
        actor=ACTOR,
        action="retire_agent",
        subject=agent_id,
        details={
            "reason": reason,
            "final_snapshot": snapshot,
            "note": RETIRED_NOTE,
            "identity": IDENTITY_REMAINS,
        },
    )
    return {"final_snapshot": snapshot, "note": RETIRED_NOTE}


_RETIRE_FUNCS = {
    "stop_routing": _stop_routing,
    "drain": _drain,
    "settle_sla": _settle_sla,
    "discard_key": _discard_key,
    "delist": _delist,
    "sweep": _sweep,
    "freeze": _freeze,
    "final_snapshot": _final_snapshot,
}
assert tuple(_RETIRE_FUNCS) == RETIRE_STAGES


def agents_matching(deps: ProvisioningDeps, agent_or_prefix: str) -> list[str]:
    """An exact agent id, or every retirable agent whose id starts with the prefix."""
    with deps.sessions() as s:
        if s.get(Agent, agent_or_prefix) is not None:
            return [agent_or_prefix]
        return list(
            s.scalars(
                select(Agent.agent_id)
                .where(
                    Agent.agent_id.startswith(agent_or_prefix + "-"),
                    Agent.status.in_(
                        [AgentStatus.ACTIVE, AgentStatus.PAUSED, AgentStatus.RETIRING]
                    ),
                )
                .order_by(Agent.agent_id)
            )
        )


# ---------------------------------------------------------------- helpers


def _agent(deps: ProvisioningDeps, agent_id: str) -> Agent:
    with deps.sessions() as s:
        agent = s.get(Agent, agent_id)
        if agent is None:
            raise LifecycleError(f"no agent {agent_id!r}")
        s.expunge(agent)
        return agent


def _active_agent(deps: ProvisioningDeps, agent_id: str) -> Agent:
    agent = _agent(deps, agent_id)
    if agent.status != AgentStatus.ACTIVE:
        raise LifecycleError(f"agent {agent_id} is {agent.status}, not active")
    return agent


def _update(deps: ProvisioningDeps, agent_id: str, **values: Any) -> None:
    with write_session(deps.sessions) as s:
        s.execute(
            update(Agent)
            .where(Agent.agent_id == agent_id)
            .values(**values, updated_at=deps.clock.now())
        )
