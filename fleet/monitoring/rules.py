"""Alert rules: conditions with durations and baselines, and the state that tracks them.

Every rule is a condition on one subject (an agent or a fleet). Each
evaluation says whether it holds now, does not hold, or is unknown (its input
is missing: the poll failed). The tracker turns that into at most one change:

    holds, for at least ``for_s``, not yet fired  ──▶  FIRED   (once)
    stops holding after having fired              ──▶  RESOLVED
    unknown                                       ──▶  nothing (the clock keeps running)

The state is a small JSON-able dict per subject (kept in Redis by the sweep),
so a rule fires once per episode however many sweeps see it, and the logic is
plain functions a test drives with a movable clock.

Baselines are exponentially weighted means whose weight follows the time
between samples (half-life from the policy). A baseline counts once it has
``baseline_min_samples`` samples, and does not learn while its rule's
condition holds, so an anomaly never becomes the new normal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from config.policy import AlertPolicy

INFO, WARNING, CRITICAL, EMERGENCY = "info", "warning", "critical", "emergency"
SEVERITIES = (INFO, WARNING, CRITICAL, EMERGENCY)

# Actions a fired alert leads to (the sweep carries them out).
PAUSE, CUT_TRAFFIC, ESCALATE, FREEZE_PROVISIONING = (
    "pause",
    "cut_traffic",
    "escalate",
    "freeze_provisioning",
)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    severity: str
    audience: str  # who hears about it: info | oncall | page | finops
    for_s: float = 0.0
    actions: tuple[str, ...] = ()
    summary: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    rule: Rule
    fired: bool  # False: resolved
    subject: str
    since: float  # epoch seconds the condition started holding
    at: float
    value: str
    threshold: str
    fleet: str | None = None
    scope: str = "agent"

    @property
    def open_key(self) -> str:
        return f"{self.rule.name}|{self.subject}"


def track(
    conds: dict[str, list[float]],
    rule: Rule,
    holding: bool | None,
    now: float,
    subject: str,
    value: object = "",
    threshold: object = "",
    *,
    fleet: str | None = None,
    scope: str = "agent",
) -> Change | None:
    """Advance one rule's condition; return the change it makes, if any."""
    if holding is None:
        return None
    entry = conds.get(rule.name)
    if holding:
        if entry is None:
            entry = conds[rule.name] = [now, 0]
        if not entry[1] and now - entry[0] >= rule.for_s:
            entry[1] = 1
            return Change(
                rule, True, subject, entry[0], now, _text(value), _text(threshold), fleet, scope
            )
        return None
    if entry is None:
        return None
    del conds[rule.name]
    if entry[1]:
        return Change(
            rule, False, subject, entry[0], now, _text(value), _text(threshold), fleet, scope
        )
    return None


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# --- baselines -------------------------------------------------------------------------


def baseline_ready(b: list[float] | None, min_samples: int) -> float | None:
    """The baseline's mean once it has enough samples, else None."""
    if b is None or b[1] < min_samples:
        return None
    return b[0]


def learn(
    bases: dict[str, list[float]], name: str, x: float, now: float, half_life_s: float
) -> None:
    """Fold sample ``x`` at time ``now`` into baseline ``name``: [mean, samples, last_at]."""
    b = bases.get(name)
    if b is None:
        bases[name] = [x, 1, now]
        return
    dt = max(0.0, now - b[2])
    # A plain mean while samples are few (no bias towards the first one), then
    # the time-weighted mean takes over.
    alpha = max(1.0 / (b[1] + 1), 1.0 - math.pow(0.5, dt / half_life_s))
    b[0] += alpha * (x - b[0])
    b[1] += 1
    b[2] = now


# --- the rule sets, compiled from the policy -------------------------------------------


@dataclass(frozen=True)
class AgentRules:
    policy: AlertPolicy
    p99: Rule
    error_rate: Rule
    sla_breach: Rule
    low_balance: Rule
    cost: Rule
    spend: Rule

    @classmethod
    def from_policy(cls, policy: AlertPolicy) -> AgentRules:
        a = policy.agent
        return cls(
            policy,
            Rule(
                "agent.p99_baseline",
                INFO,
                "info",
                a.p99_for_s,
                summary=f"p99 latency above {a.p99_baseline_factor:g}x its baseline",
            ),
            Rule(
                "agent.error_rate",
                WARNING,
                "oncall",
                a.error_rate_for_s,
                (CUT_TRAFFIC, ESCALATE),
                summary=f"error rate above {a.error_rate:.0%}",
            ),
            Rule(
                "agent.sla_breach", CRITICAL, "page", 0, (PAUSE, ESCALATE), summary="SLA breached"
            ),
            Rule(
                "agent.low_balance",
                CRITICAL,
                "page",
                0,
                (PAUSE, ESCALATE),
                summary=f"balance below ${a.low_balance}",
            ),
            Rule(
                "agent.cost_anomaly",
                WARNING,
                "finops",
                0,
                summary=f"burn rate above {a.cost_anomaly_factor:g}x its hourly baseline",
            ),
            Rule(
                "agent.spend_anomaly",
                WARNING,
                "finops",
                0,
                summary=f"spending above {a.spend_anomaly_factor:g}x its normal",
            ),
        )

    def by_name(self) -> dict[str, Rule]:
        return {
            r.name: r
            for r in (
                self.p99,
                self.error_rate,
                self.sla_breach,
                self.low_balance,
                self.cost,
                self.spend,
            )
        }


@dataclass(frozen=True, slots=True)
class AgentSample:
    """What one sweep learnt about one agent (None: not known this time)."""

    agent_id: str
    at: float
    fleet: str | None = None
    latency_p99: float | None = None
    error_rate: float | None = None
    balance: Decimal | None = None
    burn_rate_per_hour: Decimal | None = None
    sla_compliant: bool | None = None


def evaluate_agent(rules: AgentRules, state: dict[str, Any], s: AgentSample) -> list[Change]:
    """Apply one sample to an agent's rule state (mutated in place); return the changes."""
    a = rules.policy.agent
    conds: dict[str, list[float]] = state.setdefault("c", {})
    bases: dict[str, list[float]] = state.setdefault("b", {})
    now, subject, fleet = s.at, s.agent_id, s.fleet
    out: list[Change] = []

    def add(change: Change | None) -> None:
        if change is not None:
            out.append(change)

    # p99 against its own baseline, for p99_for_s.
    if s.latency_p99 is not None:
        base = baseline_ready(bases.get("p99"), a.baseline_min_samples)
        holding = None if base is None else s.latency_p99 > a.p99_baseline_factor * base
        add(
            track(
                conds,
                rules.p99,
                holding,
                now,
                subject,
                s.latency_p99,
                "" if base is None else a.p99_baseline_factor * base,
                fleet=fleet,
            )
        )
        if not holding:
            learn(bases, "p99", s.latency_p99, now, a.baseline_half_life_s)

    if s.error_rate is not None:
        add(
            track(
                conds,
                rules.error_rate,
                s.error_rate > a.error_rate,
                now,
                subject,
                s.error_rate,
                a.error_rate,
                fleet=fleet,
            )
        )

    if s.sla_compliant is not None:
        add(
            track(
                conds,
                rules.sla_breach,
                not s.sla_compliant,
                now,
                subject,
                "breached" if not s.sla_compliant else "compliant",
                "compliant",
                fleet=fleet,
            )
        )

    if s.balance is not None:
        add(
            track(
                conds,
                rules.low_balance,
                s.balance < a.low_balance,
                now,
                subject,
                s.balance,
                a.low_balance,
                fleet=fleet,
            )
        )

    # Cost: the reported burn rate against its hourly baseline...
    if s.burn_rate_per_hour is not None:
        burn = float(s.burn_rate_per_hour)
        base = baseline_ready(bases.get("burn"), a.baseline_min_samples)
        holding = None if base is None else (base > 0 and burn > a.cost_anomaly_factor * base)
        add(
            track(
                conds,
                rules.cost,
                holding,
                now,
                subject,
                s.burn_rate_per_hour,
                "" if base is None else f"{a.cost_anomaly_factor * base:.2f}",
                fleet=fleet,
            )
        )
        if not holding:
            learn(bases, "burn", burn, now, a.baseline_half_life_s)

    # ...and what it really spent since the last sample, against its normal.
    if s.balance is not None:
        prev = state.get("pb")
        state["pb"] = [str(s.balance), now]
        if prev is not None and now > prev[1]:
            spent = Decimal(prev[0]) - s.balance
            if spent >= 0:  # a top-up says nothing about spending
                rate = float(spent) * 3600.0 / (now - prev[1])
                base = baseline_ready(bases.get("spend"), a.baseline_min_samples)
                holding = (
                    None if base is None else (base > 0 and rate > a.spend_anomaly_factor * base)
                )
                add(
                    track(
                        conds,
                        rules.spend,
                        holding,
                        now,
                        subject,
                        f"{rate:.2f}",
                        "" if base is None else f"{a.spend_anomaly_factor * base:.2f}",
                        fleet=fleet,
                    )
                )
                if not holding:
                    learn(bases, "spend", rate, now, a.baseline_half_life_s)
    return out


@dataclass(frozen=True)
class FleetRules:
    policy: AlertPolicy
    emergency: Rule
    sla: Rule
    burn: Rule
    cost: Rule

    @classmethod
    def from_policy(cls, policy: AlertPolicy) -> FleetRules:
        f = policy.fleet
        return cls(
            policy,
            Rule(
                "fleet.emergency",
                EMERGENCY,
                "page",
                0,
                (FREEZE_PROVISIONING,),
                summary=f"more than {f.emergency_critical_fraction:.0%} of the fleet critical",
            ),
            Rule(
                "fleet.sla_compliance",
                CRITICAL,
                "page",
                0,
                summary=f"fleet SLA compliance below {f.sla_compliance_min:.0%}",
            ),
            Rule(
                "fleet.burn_rate",
                WARNING,
                "finops",
                0,
                summary=f"fleet burn rate above ${f.burn_rate_warning_per_hour}/h",
            ),
            Rule(
                "fleet.cost_anomaly",
                WARNING,
                "finops",
                0,
                summary=f"fleet burn above {f.burn_baseline_factor:g}x its hourly baseline",
            ),
        )

    def by_name(self) -> dict[str, Rule]:
        return {r.name: r for r in (self.emergency, self.sla, self.burn, self.cost)}


def evaluate_fleet(
    rules: FleetRules, state: dict[str, Any], fleet: str, health: Mapping[str, Any], now: float
) -> list[Change]:
    """Apply one sweep's fleet aggregate (see aggregate.FleetHealth.as_dict) to the fleet's rule
    state."""
    f = rules.policy.fleet
    a = rules.policy.agent
    conds: dict[str, list[float]] = state.setdefault("c", {})
    bases: dict[str, list[float]] = state.setdefault("b", {})
    out: list[Change] = []

    def add(change: Change | None) -> None:
        if change is not None:
            out.append(change)

    known = health["agents"] - health["unknown"]
    if known > 0:
        fraction = health["critical"] / known
        add(
            track(
                conds,
                rules.emergency,
                fraction > f.emergency_critical_fraction,
                now,
                fleet,
                f"{fraction:.4f}",
                f.emergency_critical_fraction,
                fleet=fleet,
                scope="fleet",
            )
        )
    compliance = health.get("sla_compliance")
    if compliance is not None:
        add(
            track(
                conds,
                rules.sla,
                compliance < f.sla_compliance_min,
                now,
                fleet,
                f"{compliance:.4f}",
                f.sla_compliance_min,
                fleet=fleet,
                scope="fleet",
            )
        )
    if known > 0:
        burn = Decimal(health["burn_rate_per_hour"])
        add(
            track(
                conds,
                rules.burn,
                burn > f.burn_rate_warning_per_hour,
                now,
                fleet,
                burn,
                f.burn_rate_warning_per_hour,
                fleet=fleet,
                scope="fleet",
            )
        )
        base = baseline_ready(bases.get("burn"), a.baseline_min_samples)
        holding = (
            None if base is None else (base > 0 and float(burn) > f.burn_baseline_factor * base)
        )
        add(
            track(
                conds,
                rules.cost,
                holding,
                now,
                fleet,
                burn,
                "" if base is None else f"{f.burn_baseline_factor * base:.2f}",
                fleet=fleet,
                scope="fleet",
            )
        )
        if not holding:
            learn(bases, "burn", float(burn), now, a.baseline_half_life_s)
    return out


__all__ = [
    "CRITICAL",
    "EMERGENCY",
    "INFO",
    "WARNING",
    "AgentRules",
    "AgentSample",
    "Change",
    "FleetRules",
    "Rule",
    "baseline_ready",
    "evaluate_agent",
    "evaluate_fleet",
    "learn",
    "track",
]
