"""What the gateway answers, operation by operation.

Only the fields the project reads are declared; anything else is ignored, so
a newer gateway adding fields does not break us. The gateway returns money as
a 2-dp string on some routes and a JSON number on others; the client parses
answer bodies with JSON numbers as ``Decimal`` from their text, and
:data:`Money` accepts either form, so no amount ever passes through a binary
float. Timestamps come as ISO-8601 (sometimes without a zone: UTC) or as epoch
seconds; :data:`Timestamp` takes both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    SecretStr,
)

from fleet.gateway.tracing import TraceContext


def to_decimal(value: Any) -> Decimal:
    """A Decimal from a JSON string or number, via its text."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not an amount")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int | float | str):
        # repr of a float is its shortest round-trip text, i.e. the JSON number as written.
        try:
            result = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
        except InvalidOperation:
            raise ValueError(f"not a decimal number: {str(value)[:40]!r}") from None
    else:
        raise ValueError(f"expected a decimal string or number, got {type(value).__name__}")
    if not result.is_finite():
        raise ValueError("amount must be finite")
    return result


def to_datetime(value: Any) -> datetime:
    """A UTC datetime from ISO-8601 text (a missing zone means UTC) or epoch seconds."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    elif isinstance(value, int | float | Decimal):
        when = datetime.fromtimestamp(float(value), UTC)
    elif isinstance(value, str):
        text = value.strip()
        try:
            when = datetime.fromtimestamp(float(text), UTC)
        except ValueError:
            try:
                when = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"not an ISO-8601 or epoch timestamp: {text[:40]!r}") from None
    else:
        raise ValueError(f"expected a timestamp, got {type(value).__name__}")
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


Money = Annotated[
    Decimal, BeforeValidator(to_decimal), PlainSerializer(lambda d: format(d, "f"), return_type=str)
]
# Non-money figures (percentages, scores, metric values) are exact too.
Number = Money
Timestamp = Annotated[datetime, BeforeValidator(to_datetime)]


class GatewayOutput(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    _trace: TraceContext | None = PrivateAttr(default=None)

    @property
    def trace(self) -> TraceContext | None:
        """The trace context (trace id, span id) of the request that got this answer."""
        return self._trace


Id = int | str


# identity


class RegisterResult(GatewayOutput):
    agent_id: str
    # Secret so that printing or logging a result never shows the key.
    api_key: SecretStr
    tier: str
    balance: Money
    public_key: str | None = None


class IdentityResult(GatewayOutput):
    agent_id: str
    public_key: str | None = None
    found: bool = True
    org_id: str | None = None


class ClaimChainResult(GatewayOutput):
    merkle_root: str
    leaf_count: int
    chain_id: Id


class ClaimChainsResult(GatewayOutput):
    chains: list[dict[str, Any]]


class Claim(GatewayOutput):
    metric_name: str
    claim_type: str
    bound_value: Number


class ClaimsResult(GatewayOutput):
    claims: list[Claim]


class SubmitMetricsResult(GatewayOutput):
    agent_id: str
    commitment_hashes: list[str] = Field(default_factory=list)
    verified_at: Timestamp | None = None
    valid_until: Timestamp | None = None
    data_source: str | None = None


class IngestResult(GatewayOutput):
    accepted: int
    rejected: int


class MetricPoint(GatewayOutput):
    value: Number
    timestamp: Timestamp
    data_source: str | None = None


class MetricSeries(GatewayOutput):
    data: list[MetricPoint]


class ReputationResult(GatewayOutput):
    composite_score: Number
    payment_reliability: Number | None = None
    data_source_quality: Number | None = None
    transaction_volume_score: Number | None = None
    confidence: Number | None = None
    found: bool = True


# billing


class BalanceResult(GatewayOutput):
    balance: Money
    currency: str | None = None


class DepositResult(GatewayOutput):
    new_balance: Money
    transaction_id: Id


class WithdrawResult(GatewayOutput):
    new_balance: Money
    transaction_id: Id | None = None


class BudgetCapResult(GatewayOutput):
    agent_id: str
    daily_cap: Money | None = None
    monthly_cap: Money | None = None
    alert_threshold: Number | None = None


class BudgetStatus(GatewayOutput):
    daily_spend: Money
    daily_cap: Money | None = None
    daily_pct: Number | None = None
    monthly_spend: Money
    monthly_cap: Money | None = None
    monthly_pct: Number | None = None
    alert_triggered: bool = False
    cap_exceeded: bool = False


class UsageResult(GatewayOutput):
    total_calls: int
    total_cost: Money
    total_tokens: int = 0


class FreezeResult(GatewayOutput):
    agent_id: str
    frozen: bool


class EstimateResult(GatewayOutput):
    unit_price: Money
    discount_pct: Number
    total_cost: Money


class DiscountResult(GatewayOutput):
    historical_calls: int
    discount_pct: Number
    unit_price: Money
    discounted_price: Money


class ExchangeRate(GatewayOutput):
    rate: Number


class LeaderboardEntry(GatewayOutput):
    rank: int
    agent_id: str
    value: Number


class Leaderboard(GatewayOutput):
    leaderboard: list[LeaderboardEntry]


class KeyInfo(GatewayOutput):
    key_hash_prefix: str
    agent_id: str
    tier: str
    revoked: bool = False


class KeyList(GatewayOutput):
    keys: list[KeyInfo]


class RotateResult(GatewayOutput):
    new_key: SecretStr
    tier: str
    agent_id: str
    grace_period_seconds: int
    grace_expires_at: Timestamp


# payments and disputes


class IntentResult(GatewayOutput):
    id: str
    status: str
    amount: Money
    gateway_fee: Money | None = None


class SettlementResult(GatewayOutput):
    id: str
    status: str
    amount: Money


class EscrowResult(GatewayOutput):
    id: str
    status: str
    amount: Money


class DisputeResult(GatewayOutput):
    id: str
    status: str
    deadline_at: Timestamp | None = None
    resolution: str | None = None


# marketplace, messaging, events, trust


class ServiceResult(GatewayOutput):
    id: str
    name: str
    status: str | None = None
    provider_id: str | None = None
    endpoint: str | None = None
    tags: list[str] = []
    tools: list[Any] = []
    pricing: dict[str, Any] | None = None
    trust_score: Number | None = None


class ServiceSearch(GatewayOutput):
    services: list[ServiceResult]


class Match(GatewayOutput):
    service: ServiceResult
    rank_score: Number


class MatchResult(GatewayOutput):
    matches: list[Match]


class MessageResult(GatewayOutput):
    id: str
    sender: str
    recipient: str
    message_type: str
    thread_id: str | None = None
    created_at: Timestamp | None = None


class Message(MessageResult):
    subject: str | None = None
    body: str | None = None


class MessageList(GatewayOutput):
    messages: list[Message]


class PublishResult(GatewayOutput):
    event_id: int


class BusEvent(GatewayOutput):
    id: int
    event_type: str
    source: str
    payload: dict[str, Any] = Field(default_factory=dict)
    integrity_hash: str | None = None
    created_at: Timestamp


class EventList(GatewayOutput):
    events: list[BusEvent]


class DeletedResult(GatewayOutput):
    deleted: bool
