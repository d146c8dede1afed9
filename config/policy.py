"""The domain policy: every number in the operations rules, as validated YAML.

Money is ``Decimal`` (written as a string in YAML, never a float); ratios are
fractions in 0..1. Durations are seconds, so a demo can shorten a 30-minute
escalation to 30 seconds without touching code.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from config.errors import ConfigError, describe_validation_error

Money = Annotated[Decimal, Field(ge=0, decimal_places=2)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Seconds = Annotated[float, Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlaTerms(_Model):
    p99_latency_ms: Annotated[float, Field(gt=0)]
    uptime_pct: Annotated[Decimal, Field(gt=0, le=100)]
    accuracy_pct: Annotated[Decimal, Field(gt=0, le=100)]
    max_cost_per_task: Money
    review_days: Annotated[int, Field(gt=0)]


class EscalationTier(_Model):
    tier: Annotated[int, Field(ge=1, le=4)]
    after_s: Seconds
    action: str


class EscalationPolicy(_Model):
    tiers: list[EscalationTier]
    # Consecutive compliant samples needed to close an episode (hysteresis).
    recovery_samples: Annotated[int, Field(ge=1)] = 2
    ack_timeout_s: Seconds = 1800
    # Tiers an operator's acknowledgement holds back until ack_timeout_s runs
    # out; the automated ones (1, 2) run on "unresolved", not "unacknowledged".
    ack_pauses_tiers: list[Annotated[int, Field(ge=1, le=4)]] = [3, 4]
    traffic_cut_fraction: Fraction = 0.5
    remediation_webhook: str | None = None
    remediation_timeout_s: Annotated[float, Field(gt=0)] = 10
    # Who tier 3 and 4 notify (send_message's "to"), and how urgently.
    operator: str = "fleet-operator"
    notify_priority: str = "high"
    # A tier action claimed by a worker that then vanished is taken over after this.
    action_lease_s: Annotated[float, Field(gt=0)] = 300
    # Attempts at a tier action whose gateway or webhook keeps failing transiently.
    action_max_attempts: Annotated[int, Field(ge=1)] = 5
    action_retry_s: Annotated[float, Field(gt=0)] = 30
    # A tier recorded as sent but never picked up (the message was lost) is sent again after this.
    redispatch_after_s: Annotated[float, Field(gt=0)] = 900

    @field_validator("tiers")
    @classmethod
    def _tiers_in_order(cls, tiers: list[EscalationTier]) -> list[EscalationTier]:
        if [t.tier for t in tiers] != [1, 2, 3, 4]:
            raise ValueError("must list tiers 1, 2, 3, 4 in order")
        starts = [t.after_s for t in tiers]
        if starts != sorted(starts):
            raise ValueError("after_s must not decrease from one tier to the next")
        return tiers


class HealthThresholds(_Model):
    error_rate: Fraction
    p99_ms: Annotated[float, Field(gt=0)]


class HealthPolicy(_Model):
    critical: HealthThresholds
    degraded: HealthThresholds

    @model_validator(mode="after")
    def _critical_is_worse(self) -> HealthPolicy:
        if (
            self.critical.error_rate < self.degraded.error_rate
            or self.critical.p99_ms < self.degraded.p99_ms
        ):
            raise ValueError("critical thresholds must not be below degraded ones")
        return self


class MonitoringPolicy(_Model):
    """How agents report in: the heartbeat cadence and what a silence means.

    The silences are multiples of the interval, so shortening the cadence for a
    demo shortens them with it.
    """

    # Every agent publishes a signed heartbeat on the gateway's bus this often.
    heartbeat_interval_s: Annotated[float, Field(gt=0)] = 60
    # No heartbeat for this many intervals: the agent's health is unknown...
    heartbeat_unknown_after: Annotated[float, Field(gt=1)] = 3
    # ...and for this many: critical (a dead agent does not report itself).
    heartbeat_critical_after: Annotated[float, Field(gt=1)] = 10
    # The wallet poll (fleet.monitoring.plan): every agent's balance and budget
    # are read at least once per this period, one slot of the fleet per sweep tick.
    wallet_period_s: Annotated[float, Field(gt=0)] = 300
    # Fraction of each agent's own rate window the poll leaves to the agent's own
    # work (its heartbeats are counted on top).
    wallet_headroom: Annotated[float, Field(ge=0, lt=1)] = 0.5
    # Wallet reads a second the poll may send with the admin key (not rate limited,
    # but the gateway behind it has a capacity: ~200 reads/s measured locally);
    # 0 reads every wallet with the agent's own key.
    admin_calls_per_s: Annotated[float, Field(ge=0)] = 100
    # The gateway's hourly window per agent by key tier (pricing.json rate_limit_per_hour).
    tier_windows: dict[str, Annotated[int, Field(gt=0)]] = {
        "free": 100,
        "starter": 1_000,
        "pro": 10_000,
        "enterprise": 100_000,
    }

    @model_validator(mode="after")
    def _critical_after_unknown(self) -> MonitoringPolicy:
        if self.heartbeat_critical_after <= self.heartbeat_unknown_after:
            raise ValueError("heartbeat_critical_after must be above heartbeat_unknown_after")
        return self

    @property
    def unknown_after_s(self) -> float:
        return self.heartbeat_interval_s * self.heartbeat_unknown_after

    @property
    def critical_after_s(self) -> float:
        return self.heartbeat_interval_s * self.heartbeat_critical_after


class FleetAlertRules(_Model):
    emergency_critical_fraction: Fraction = 0.20
    sla_compliance_min: Fraction = 0.95
    burn_rate_warning_per_hour: Money = Decimal("100.00")
    # Cost anomaly: fleet burn above this multiple of its hourly baseline.
    burn_baseline_factor: Annotated[float, Field(gt=1)] = 2.0


class AgentAlertRules(_Model):
    p99_baseline_factor: Annotated[float, Field(gt=1)] = 2.0
    p99_for_s: Seconds = 300
    error_rate: Fraction = 0.05
    error_rate_for_s: Seconds = 600
    low_balance: Money = Decimal("5.00")
    # Cost anomaly: burn rate above this multiple of the agent's hourly baseline...
    cost_anomaly_factor: Annotated[float, Field(gt=1)] = 2.0
    # ...or observed spending (balance going down) above this multiple of its normal.
    spend_anomaly_factor: Annotated[float, Field(gt=1)] = 3.0
    # Baselines are exponentially weighted means with this half-life, and
    # count only after this many samples (a new agent has no "normal" yet).
    baseline_half_life_s: Annotated[float, Field(gt=0)] = 86400
    baseline_min_samples: Annotated[int, Field(ge=1)] = 10


class BehaviourSignals(_Model):
    tool_calls_per_task_factor: Annotated[float, Field(gt=1)] = 2.0
    unique_tools_per_task_factor: Annotated[float, Field(gt=1)] = 3.0
    retry_ratio: Fraction = 0.20
    escalation_rate: Fraction = 0.15
    decision_latency_p99_over_p50: Annotated[float, Field(gt=1)] = 5.0
    min_counterparties_per_day: Annotated[int, Field(ge=0)] = 2
    # A window with fewer tasks than this says nothing about behaviour.
    min_tasks: Annotated[int, Field(ge=1)] = 20
    # Task logs are judged over this rolling window; baselines fold in each finished window.
    window_s: Annotated[float, Field(ge=60)] = 3600
    # Finished windows a per-task baseline needs before it is compared against.
    baseline_windows: Annotated[int, Field(ge=1)] = 3


class AlertPolicy(_Model):
    fleet: FleetAlertRules = FleetAlertRules()
    agent: AgentAlertRules = AgentAlertRules()
    behaviour: BehaviourSignals = BehaviourSignals()
    # Every alert (fired and resolved) is posted to these (Slack-compatible JSON)...
    webhooks: list[str] = []
    # ...and to the URLs of its audience: "page", "oncall", "finops", "info".
    routes: dict[Literal["page", "oncall", "finops", "info"], list[str]] = {}
    webhook_timeout_s: Annotated[float, Field(gt=0)] = 5
    # Attempts per webhook per notice (transient failures only), then it is dropped and logged.
    webhook_max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    webhook_retry_s: Annotated[float, Field(ge=0)] = 10


class ModelPrice(_Model):
    """What a model costs in the fleet's currency: per 1,000 tokens, and at least ``minimum``
    per task."""

    per_1k_tokens: Annotated[Decimal, Field(ge=0)]
    minimum: Annotated[Decimal, Field(ge=0)] = Decimal("0")


class Budgets(_Model):
    """The spending guardrails (operations §3), held by fleet.budgets in one Redis script.

    ``per_task`` caps one reservation; ``per_agent_hour`` is a rolling 60 minutes per agent
    (one-minute buckets); ``fleet_day`` is the fleet's UTC calendar day, and a reservation
    it refuses pauses the fleet's spending until a HIGH approval resumes it. A task pool
    that pays has its own total in ``pools``.
    """

    per_task: Money
    per_agent_hour: Money
    fleet_day: Money
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3,5}$")] = "USD"
    # Task budget pools (cost attribution by pool): name → total the pool may spend.
    pools: dict[str, Money] = {}
    # Model prices behind estimate_cost when the gateway gives no estimate
    # (operations §3: small ~$0.001/task, mid-tier ~$0.008, frontier ~$0.03).
    models: dict[str, ModelPrice] = {
        "small": ModelPrice(per_1k_tokens=Decimal("0.0005"), minimum=Decimal("0.001")),
        "mid": ModelPrice(per_1k_tokens=Decimal("0.004"), minimum=Decimal("0.008")),
        "frontier": ModelPrice(per_1k_tokens=Decimal("0.015"), minimum=Decimal("0.03")),
    }
    # A reservation whose task never settles nor releases is released after this.
    reservation_ttl_s: Annotated[float, Field(gt=0)] = 900
    # A task id's answer (admitted, refused, settled) is remembered this long: the same
    # id reserved again within it gets the first answer, never a second hold.
    answer_memory_s: Annotated[float, Field(gt=0)] = 86400
    # Gateway credits per unit of ``currency``, for the wallet caps set at the gateway
    # (provisioning.budget_cap follows these budgets when it names no daily/monthly).
    gateway_credits_per_unit: Annotated[Decimal, Field(gt=0)] = Decimal("1")

    @model_validator(mode="after")
    def _task_fits(self) -> Budgets:
        if self.per_task > self.per_agent_hour or self.per_task > self.fleet_day:
            raise ValueError("per_task must not be above per_agent_hour or fleet_day")
        return self


class BurnRateAlert(_Model):
    factor: Annotated[float, Field(gt=0)]
    long_window_s: Annotated[float, Field(gt=0)]
    short_window_s: Annotated[float, Field(gt=0)]
    severity: str


class ErrorBudgetPolicy(_Model):
    # The SLO window is explicit: 30 days gives 216 minutes at 0.5 %; an
    # average calendar month (30.44 days) gives the playbook's 219.
    slo_window_days: Annotated[float, Field(gt=0)] = 30
    allowed_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.005
    burn_alerts: list[BurnRateAlert] = []
    # Time to exhaustion assumes the burn of this most recent window goes on.
    exhaustion_rate_window_s: Annotated[float, Field(gt=0)] = 3600
    # send_message priority per alert severity; fleet alerts always notify the
    # operator, per-agent ones only when asked (escalation already handles agents).
    alert_priority: dict[str, str] = {"page": "urgent", "ticket": "normal"}
    notify_agent_alerts: bool = False


class Risk(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"


class ApprovalPolicy(_Model):
    # Action name → risk; actions not listed are classified by default_risk.
    matrix: dict[str, Risk]
    default_risk: Risk = Risk.MEDIUM
    quorum: dict[Risk, Annotated[int, Field(ge=0)]] = {Risk.HIGH: 1, Risk.CRITICAL: 2}
    request_expiry_s: Seconds = 86400
    review_due_s: Seconds = 86400
    high_money_threshold: Money = Decimal("100.00")
    medium_money_ceiling: Money = Decimal("10.00")
    # How often beat denies expired requests and re-sends approved work.
    sweep_s: Annotated[float, Field(gt=0)] = 60
    # Who may approve (the N of the M-of-N quorum); empty: anyone who can reach the CLI or API.
    approvers: list[str] = []


AgentId = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$")]


class BudgetCapPolicy(_Model):
    """The cap set on every new agent's wallet (``PUT …/budget``): it bounds gateway fees.

    Not named in the policy file, ``daily`` and ``monthly`` follow ``budgets``
    (:func:`Policy._caps_follow_budgets`): daily = min(per_agent_hour × 24, fleet_day),
    monthly = 30 × daily, in gateway credits (× budgets.gateway_credits_per_unit).
    """

    daily: Annotated[Decimal, Field(gt=0, decimal_places=2)] = Decimal("10.00")
    monthly: Annotated[Decimal, Field(gt=0, decimal_places=2)] = Decimal("200.00")
    alert_threshold: Annotated[float, Field(gt=0, le=1)] = 0.8

    @model_validator(mode="after")
    def _monthly_covers_daily(self) -> BudgetCapPolicy:
        if self.monthly < self.daily:
            raise ValueError("monthly must not be below daily")
        return self


class ListingPolicy(_Model):
    """How an agent's marketplace listing is written (``register_service``)."""

    category: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "agents"
    # {agent_id} is replaced; the gateway probes this address for its health monitor.
    endpoint: Annotated[str, StringConstraints(pattern=r"^https?://")] = (
        "https://{agent_id}.agents.invalid/a2a"
    )
    # The manifest's price named this is the listing's per-call cost (else the first one).
    price_name: str = "per_call"


class ProvisioningPolicy(_Model):
    max_agents_per_manifest: Annotated[int, Field(gt=0)] = 10000
    # The gateway's key tiers a manifest may name; an operator may allow fewer.
    tiers: list[str] = ["free", "starter", "pro", "enterprise"]
    # The gateway's key tiers, lowest first. A group whose tier is below a step's
    # tier skips that step (recorded); a key below it waits for, or fails without,
    # an imported key. A manifest tier not listed here counts as the lowest.
    key_tiers: list[str] = ["free", "starter", "pro", "enterprise"]
    # What a step needing a better key than the agent holds does: wait for
    # `fleet keys import` (the agent is "awaiting_key"), or fail the agent.
    on_missing_tier: Literal["wait", "fail"] = "wait"
    # Monthly price of each key tier: a tier upgrade's cost impact.
    tier_prices: dict[str, Money] = {
        "free": Decimal("0.00"),
        "starter": Decimal("29.00"),
        "pro": Decimal("199.00"),
        "enterprise": Decimal("416.67"),
    }
    budget_cap: BudgetCapPolicy = BudgetCapPolicy()
    listing: ListingPolicy = ListingPolicy()
    key_rotation_days: Annotated[float, Field(gt=0)] = 90
    # The gateway keeps a rotated key working this long (fixed at 300 s in 1.4.8).
    key_overlap_s: Seconds = 300
    # The treasury agent at the gateway: swept funds are deposited into its wallet.
    treasury_wallet: AgentId = "fleet-treasury"
    step_max_attempts: Annotated[int, Field(ge=1)] = 3

    @model_validator(mode="after")
    def _priced_tiers(self) -> ProvisioningPolicy:
        unknown = sorted(set(self.tier_prices) - set(self.key_tiers))
        if unknown:
            raise ValueError(f"tier_prices names tiers not in key_tiers: {', '.join(unknown)}")
        return self


class ScalingPolicy(_Model):
    scale_up_queue_per_agent: float = 10
    scale_up_step: Annotated[int, Field(gt=0)] = 5
    scale_down_queue_per_agent: float = 1
    scale_down_step: Annotated[int, Field(gt=0)] = 2
    max_agents: Annotated[int, Field(gt=0)] = 100
    min_agents: Annotated[int, Field(ge=0)] = 5
    cooldown_s: Seconds = 600
    drain_timeout_s: Seconds = 300
    tier_upgrade_approval_increase: Annotated[float, Field(gt=0)] = 2.0
    # The autoscaler's decision pass (beat); a segment starts in observe mode.
    evaluate_every_s: Annotated[float, Field(gt=0)] = 60
    # An agent counts as healthy only on a monitoring snapshot at most this old.
    snapshot_max_age_s: Annotated[float, Field(gt=0)] = 300

    @model_validator(mode="after")
    def _min_below_max(self) -> ScalingPolicy:
        if self.min_agents > self.max_agents:
            raise ValueError("min_agents must not be above max_agents")
        if self.scale_down_queue_per_agent > self.scale_up_queue_per_agent:
            raise ValueError(
                "scale_down_queue_per_agent must not be above scale_up_queue_per_agent"
            )
        return self


class DisputePolicy(_Model):
    # How the admin resolves an SLA dispute: the gateway's two outcomes, the
    # escrow refunded to its payer or released to its payee (no partial refund).
    resolution: Literal["refund", "release"] = "refund"
    notes: str = "Resolved per SLA breach policy."
    # "close": resolve when the episode ends (its length is known); "open": at once.
    resolve_on: Literal["open", "close"] = "close"


class OutsideAgentsPolicy(_Model):
    """Outside agents: marketplace services (not ours) as candidates beside our own agents."""

    allowed: bool = False
    # search_services is free; best_match costs 0.10 per call at the gateway.
    discovery: Literal["search_services", "best_match"] = "search_services"
    # A service's trust score (0..1, the marketplace's) below this is not a candidate.
    min_trust_score: Annotated[float, Field(ge=0, le=1)] = 0.5
    # A service whose price per call is above this is not a candidate.
    max_cost_per_call: Money = Decimal("1.00")
    # Discovery results are cached per capability set for this long (Redis, with a TTL),
    # so discovery is not a gateway call per task.
    cache_ttl_s: Annotated[float, Field(gt=0, le=86400)] = 300.0
    # Tasks in flight at one outside agent at which it gets no more.
    max_inflight_per_agent: Annotated[int, Field(ge=1)] = 5
    # Services asked for per discovery call.
    discovery_limit: Annotated[int, Field(ge=1, le=50)] = 20


class RoutingPolicy(_Model):
    """Weighted agent selection: score = Σ weight × factor, each factor in 0..1."""

    reputation_weight: Fraction = 0.4
    headroom_weight: Fraction = 0.2
    idleness_weight: Fraction = 0.2
    sla_margin_weight: Fraction = 0.2
    # Budget headroom = balance / this, capped at 1.
    full_headroom_balance: Annotated[Decimal, Field(gt=0)] = Decimal("100.00")
    # Work items in flight at which an agent counts as fully busy (idleness 0).
    busy_inflight: Annotated[int, Field(gt=0)] = 10
    outside: OutsideAgentsPolicy = OutsideAgentsPolicy()


class ModelRoutingPolicy(_Model):
    """Which model a task runs on (issue 14 item 4): small under a token count, otherwise
    frontier while the budget left is above a threshold, mid-tier below it."""

    small: Annotated[str, StringConstraints(min_length=1, max_length=128)] = "small"
    mid: Annotated[str, StringConstraints(min_length=1, max_length=128)] = "mid"
    frontier: Annotated[str, StringConstraints(min_length=1, max_length=128)] = "frontier"
    small_below_tokens: Annotated[int, Field(ge=0)] = 100
    # Budget left (the fleet-day budget's remainder) at or below which frontier gives way.
    frontier_min_budget_left: Money = Decimal("200.00")


class WorkPolicy(_Model):
    """The work plane: tasks in, agent selection, delivery over A2A."""

    models: ModelRoutingPolicy = ModelRoutingPolicy()
    # Agents whose snapshot shows an SLA breach get no work.
    exclude_breached: bool = True
    # A task that fails before any spend goes to one other agent, once.
    reroute_before_spend: bool = True
    # The whole delivery (send, then following the task's states) must end within this.
    delivery_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Between two reads of a task that is not finished yet.
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.2


class ControlPolicy(_Model):
    """The kill switch (fleet/control): how work held by a pause waits, how Redis is kept true."""

    # Work held by a paused control loop (an escalation action, a provisioning step, a
    # batch of tasks) is tried again after this long, without spending an attempt.
    recheck_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # Beat re-asserts the pause and the fleet freezes from the database into Redis.
    sync_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Longest reason a person may give for a pause or a freeze.
    max_reason_chars: Annotated[int, Field(gt=0, le=10000)] = 500


class RetentionPolicy(_Model):
    metrics_days: Annotated[float, Field(gt=0)] = 90
    audit_days: Annotated[float, Field(ge=183)] = 183


class AuditPolicy(_Model):
    """The audit chain: checkpoints, where its files live, batching and mirroring.

    Relative paths are under the settings' data_dir.
    """

    chain: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] = "main"
    # A signed checkpoint at least every this many entries...
    checkpoint_every: Annotated[int, Field(ge=1)] = 1000
    # ...and, when anything was appended since the last one, at least this often.
    checkpoint_interval_s: Annotated[float, Field(gt=0)] = 300
    signing_key_file: Path = Path("audit/signing-key.pem")
    # Checkpoints are also appended here, outside the database.
    checkpoint_file: Path = Path("audit/checkpoints.jsonl")
    archive_dir: Path = Path("audit/archive")
    report_dir: Path = Path("reports")
    # Entries per queue message when a producer sends many at once.
    batch_size: Annotated[int, Field(ge=1, le=5000)] = 500
    mirror_enabled: bool = True
    # Entries one mirroring run sends before handing over to a fresh task.
    mirror_run_max: Annotated[int, Field(ge=1)] = 500
    # A mirroring worker's claim on the outbox; another may take over after it lapses.
    mirror_lease_s: Annotated[float, Field(gt=0)] = 60
    # How often beat nudges the outbox (it also runs after every append).
    mirror_every_s: Annotated[float, Field(gt=0)] = 30


class TransparencyPolicy(_Model):
    # Art. 13: the line every agent-to-counterparty message carries.
    ai_disclosure: str = (
        "[Automated message: sent by AI agent {agent_id} of fleet {fleet}, "
        "operated by Fleet Commander.]"
    )


AttributionMode = Literal["caller-pays", "proportional", "task-pool"]


class FinopsPolicy(_Model):
    """Issue 15: cost attribution, the weekly FinOps review and fleet economics.

    Segments are agent id prefixes (a manifest group's ``id_prefix``); a segment not
    named in a per-segment map takes the default.
    """

    # How a multi-agent task's cost is shared: its caller (the root task's agent) pays
    # all, each agent its share of the spans in the task's trace, or the task's pool.
    attribution_default: AttributionMode = "caller-pays"
    attribution: dict[str, AttributionMode] = {}
    # Every figure of the review and the economics is shown in this currency,
    # converted through the gateway's exchange rates.
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3,5}$")] = "USD"
    # What one completed task is worth to the operator (ROI, break-even), per segment.
    value_per_task_default: Money = Decimal("0.00")
    value_per_task: dict[str, Money] = {}
    # A segment's weekly budget; a segment not named gets an equal share of
    # budgets.fleet_day x 7 among the segments that spent.
    weekly_budget: dict[str, Money] = {}
    # Spent above this share of its budget: the segment is flagged in the review.
    flag_over: Annotated[float, Field(gt=0)] = 1.10
    trend_weeks: Annotated[int, Field(ge=1, le=52)] = 4
    top_tasks: Annotated[int, Field(ge=1, le=100)] = 10
    # The Monday review (crontab, UTC): the week before is reviewed.
    review_cron_day_of_week: Annotated[int, Field(ge=0, le=6)] = 1
    review_cron_hour: Annotated[int, Field(ge=0, le=23)] = 1
    review_cron_minute: Annotated[int, Field(ge=0, le=59)] = 0
    # Volume discount capture: the gateway tool whose tiers are asked for, and the
    # quantities probed to find the tiers (the gateway answers one quantity at a time).
    discount_tool: Annotated[str, StringConstraints(min_length=1, max_length=128)] = "best_match"
    discount_probe_quantities: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = [
        100,
        1000,
        10000,
        100000,
    ]
    # Economics: the gateway calls one task makes, and the days a month counts.
    calls_per_task: Annotated[float, Field(gt=0)] = 1.0
    days_per_month: Annotated[int, Field(ge=1, le=31)] = 30

    def attribution_for(self, segment: str) -> AttributionMode:
        return self.attribution.get(segment, self.attribution_default)

    def value_for(self, segment: str) -> Decimal:
        return self.value_per_task.get(segment, self.value_per_task_default)


class Policy(_Model):
    sla_templates: dict[str, SlaTerms]
    escalation: EscalationPolicy
    health: HealthPolicy
    monitoring: MonitoringPolicy = MonitoringPolicy()
    alerts: AlertPolicy = AlertPolicy()
    budgets: Budgets
    error_budget: ErrorBudgetPolicy = ErrorBudgetPolicy()
    approvals: ApprovalPolicy
    provisioning: ProvisioningPolicy = ProvisioningPolicy()
    scaling: ScalingPolicy = ScalingPolicy()
    disputes: DisputePolicy = DisputePolicy()
    routing: RoutingPolicy = RoutingPolicy()
    work: WorkPolicy = WorkPolicy()
    control: ControlPolicy = ControlPolicy()
    retention: RetentionPolicy = RetentionPolicy()
    audit: AuditPolicy = AuditPolicy()
    transparency: TransparencyPolicy = TransparencyPolicy()
    finops: FinopsPolicy = FinopsPolicy()

    @model_validator(mode="before")
    @classmethod
    def _caps_follow_budgets(cls, raw: Any) -> Any:
        """The gateway's wallet caps from ``budgets`` unless the file names them."""
        if not isinstance(raw, dict) or not isinstance(raw.get("budgets"), dict):
            return raw
        provisioning = raw.get("provisioning") or {}
        if not isinstance(provisioning, dict):
            return raw
        cap = provisioning.get("budget_cap") or {}
        if not isinstance(cap, dict) or ("daily" in cap and "monthly" in cap):
            return raw
        try:
            b = raw["budgets"]
            rate = Decimal(str(b.get("gateway_credits_per_unit", "1")))
            daily = min(Decimal(str(b["per_agent_hour"])) * 24, Decimal(str(b["fleet_day"])))
        except (KeyError, ArithmeticError, ValueError):
            return raw  # the field validators name what is wrong
        daily_credits = (daily * rate).quantize(Decimal("0.01"))
        derived = {
            "daily": str(daily_credits),
            "monthly": str((daily_credits * 30).quantize(Decimal("0.01"))),
        }
        cap = {**derived, **cap}
        return {**raw, "provisioning": {**provisioning, "budget_cap": cap}}

    @field_validator("sla_templates")
    @classmethod
    def _some_template(cls, templates: dict[str, SlaTerms]) -> dict[str, SlaTerms]:
        if not templates:
            raise ValueError("at least one SLA template is required")
        return templates


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"invalid YAML in {path}{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid configuration in {path}: expected a mapping at the top level")
    return raw


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) is replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            _merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def load_policy(path: Path, _seen: tuple[Path, ...] = ()) -> Policy:
    """Read and validate a policy file, or raise a one-line ConfigError.

    A file may begin with ``extends: other.yaml`` (relative to itself) and
    give only what differs.
    """
    return _validate(_resolve(Path(path), _seen), path)


def _resolve(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"invalid configuration in {path}: extends itself (through {seen[-1]})")
    raw = _read_yaml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"invalid configuration in {path}: extends: expected a file name")
    return _merge(_resolve(path.parent / parent, (*seen, path.resolve())), raw)


def _validate(raw: dict[str, Any], path: Path) -> Policy:
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source=str(path))) from None
