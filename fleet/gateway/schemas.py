"""What the gateway answers, tool by tool.

Only the main fields of each answer are declared (the spec's table); anything
else the gateway sends is kept (``extra="allow"``) so a newer gateway does not
break us. Money is a decimal string on the wire and a ``Decimal`` here; a float
where money is expected is a protocol error, not something to round silently.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    model_validator,
)

from fleet.gateway.tracing import TraceContext


def _no_float(value: Any) -> Any:
    if isinstance(value, float):
        # ValueError, not TypeError: pydantic reports only the former as a validation error.
        raise ValueError("money must be a decimal string, not a float")  # noqa: TRY004
    return value


Money = Annotated[Decimal, BeforeValidator(_no_float), Field(allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1)]
NonNegative = Annotated[float, Field(ge=0)]


class GatewayOutput(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    _trace: TraceContext | None = PrivateAttr(default=None)

    @property
    def trace(self) -> TraceContext | None:
        """The trace context (trace id, span id) of the request that got this answer."""
        return self._trace


# identity


class RegisterAgentResult(GatewayOutput):
    agent_id: str
    # Secret so that printing or logging a result never shows the key.
    api_key: SecretStr | None = None
    tier: str
    registered_at: datetime | None = None


class ClaimChainResult(GatewayOutput):
    chain_id: str
    claims: list[Any]


class DeregisterAgentResult(GatewayOutput):
    agent_id: str
    status: str


# billing and payments


class WalletResult(GatewayOutput):
    wallet_id: str
    balance: Money


class BalanceResult(GatewayOutput):
    balance: Money
    burn_rate_per_hour: Money


class CostEstimate(GatewayOutput):
    estimated_cost: Money


class TierChangeEstimate(GatewayOutput):
    current_daily_cost: Money
    projected_daily_cost: Money


class EstimateCostResult(GatewayOutput):
    """Either form of ``estimate_cost`` (what ``call("estimate_cost", ...)`` checks)."""

    estimated_cost: Money | None = None
    current_daily_cost: Money | None = None
    projected_daily_cost: Money | None = None

    @model_validator(mode="after")
    def _one_form(self) -> EstimateCostResult:
        tier_form = self.current_daily_cost is not None and self.projected_daily_cost is not None
        if self.estimated_cost is None and not tier_form:
            raise ValueError(
                "expected estimated_cost, or current_daily_cost and projected_daily_cost"
            )
        return self


class VolumeDiscountResult(GatewayOutput):
    discount_pct: Decimal
    volume: Annotated[int, Field(ge=0)]
    # None at the top tier.
    next_tier_volume: int | None = None


class ConversionResult(GatewayOutput):
    amount: Money
    rate: Decimal


class TransactionResult(GatewayOutput):
    transaction_id: str


class WalletFreezeResult(GatewayOutput):
    wallet_id: str
    frozen: bool


# trust


class SubmitMetricsResult(GatewayOutput):
    accepted: bool


class ReputationResult(GatewayOutput):
    score: Fraction


class AnalyticsResult(GatewayOutput):
    # Only the metrics asked for come back (by default these five).
    latency_p50: NonNegative | None = None  # ms
    latency_p99: NonNegative | None = None  # ms
    error_rate: Fraction | None = None
    tool_call_volume: Annotated[int, Field(ge=0)] | None = None
    task_completion_rate: Fraction | None = None


class AgentSearchResult(GatewayOutput):
    agents: list[Any]


class LeaderboardResult(GatewayOutput):
    entries: list[Any]


# sla


class CreateSlaResult(GatewayOutput):
    sla_id: str


class SlaComplianceResult(GatewayOutput):
    compliant: bool
    margin_pct: float
    breached_terms: list[str]


class SlaViolationsResult(GatewayOutput):
    violations: list[Any]
    duration_minutes: NonNegative


# messaging, disputes


class MessageResult(GatewayOutput):
    message_id: str


class DisputeResult(GatewayOutput):
    dispute_id: str
    status: str


# marketplace


class ServiceResult(GatewayOutput):
    service_id: str


class ServiceListing(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    agent_id: str
    price: Money
    reputation: Fraction
    latency_ms: NonNegative


class ServiceSearchResult(GatewayOutput):
    services: list[ServiceListing]


class BestMatchResult(GatewayOutput):
    # The chosen agent id, or None when nothing matched; the key must be present.
    best_match: str | None


# compliance, platform


class AuditTrailResult(GatewayOutput):
    audit_id: str


class ComplianceReportResult(GatewayOutput):
    # Article number → that article's status, findings and evidence, as sent.
    articles: dict[str, Any]
    compliant: bool | None = None


class RateLimitResult(GatewayOutput):
    limit: Annotated[int, Field(ge=0)]
    remaining: Annotated[int, Field(ge=0)]
    reset_at: datetime | float


__all__ = [
    "AgentSearchResult",
    "AnalyticsResult",
    "AuditTrailResult",
    "BalanceResult",
    "BestMatchResult",
    "ClaimChainResult",
    "ComplianceReportResult",
    "ConversionResult",
    "CostEstimate",
    "CreateSlaResult",
    "DeregisterAgentResult",
    "DisputeResult",
    "EstimateCostResult",
    "GatewayOutput",
    "LeaderboardResult",
    "MessageResult",
    "Money",
    "RateLimitResult",
    "RegisterAgentResult",
    "ReputationResult",
    "ServiceListing",
    "ServiceResult",
    "ServiceSearchResult",
    "SlaComplianceResult",
    "SlaViolationsResult",
    "SubmitMetricsResult",
    "TierChangeEstimate",
    "TransactionResult",
    "VolumeDiscountResult",
    "WalletFreezeResult",
    "WalletResult",
]
