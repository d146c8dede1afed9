"""The 29 gateway tools the project uses: names, answer models, typed call builders.

Each builder takes typed arguments and returns a :class:`ToolCall` (tool name,
input, answer model) that either client runs::

    balance = client.run(tools.get_balance("fleet-a-0001-1a2b3c4d"))        # sync
    balance = await aclient.run(tools.get_balance("fleet-a-0001-1a2b3c4d")) # async

so each tool is written once and both clients keep full type hints (the
answer type follows from the builder). Money arguments take ``Decimal`` (or a
decimal string) and go on the wire as strings; so does any ``Decimal`` nested
in a mapping (prices in ``pricing``), by the client's JSON encoder.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, Literal, TypeVar

from fleet.gateway import schemas as s

OutT = TypeVar("OutT", bound=s.GatewayOutput)

MoneyArg = Decimal | str | int


class Tool(enum.StrEnum):
    REGISTER_AGENT = "register_agent"
    BUILD_CLAIM_CHAIN = "build_claim_chain"
    CREATE_WALLET = "create_wallet"
    GET_BALANCE = "get_balance"
    ESTIMATE_COST = "estimate_cost"
    GET_VOLUME_DISCOUNT = "get_volume_discount"
    CONVERT_CURRENCY = "convert_currency"
    RECORD_TRANSACTION = "record_transaction"
    SUBMIT_METRICS = "submit_metrics"
    GET_AGENT_REPUTATION = "get_agent_reputation"
    GET_ANALYTICS = "get_analytics"
    SEARCH_AGENTS_BY_METRICS = "search_agents_by_metrics"
    GET_LEADERBOARD = "get_leaderboard"
    CREATE_SLA = "create_sla"
    CHECK_SLA_COMPLIANCE = "check_sla_compliance"
    GET_SLA_VIOLATIONS = "get_sla_violations"
    SEND_MESSAGE = "send_message"
    CREATE_DISPUTE = "create_dispute"
    RESOLVE_DISPUTE = "resolve_dispute"
    REGISTER_SERVICE = "register_service"
    SEARCH_SERVICES = "search_services"
    BEST_MATCH = "best_match"
    CREATE_AUDIT_TRAIL = "create_audit_trail"
    GET_COMPLIANCE_REPORT = "get_compliance_report"
    CHECK_RATE_LIMIT = "check_rate_limit"
    FREEZE_WALLET = "freeze_wallet"
    UNFREEZE_WALLET = "unfreeze_wallet"
    TRANSFER_FUNDS = "transfer_funds"
    DEREGISTER_AGENT = "deregister_agent"


# What `client.call(name, input)` validates an answer against. Tools not listed
# (the gateway has many more) are only checked to be a JSON object.
OUTPUT_MODELS: Mapping[str, type[s.GatewayOutput]] = {
    Tool.REGISTER_AGENT: s.RegisterAgentResult,
    Tool.BUILD_CLAIM_CHAIN: s.ClaimChainResult,
    Tool.CREATE_WALLET: s.WalletResult,
    Tool.GET_BALANCE: s.BalanceResult,
    Tool.ESTIMATE_COST: s.EstimateCostResult,
    Tool.GET_VOLUME_DISCOUNT: s.VolumeDiscountResult,
    Tool.CONVERT_CURRENCY: s.ConversionResult,
    Tool.RECORD_TRANSACTION: s.TransactionResult,
    Tool.SUBMIT_METRICS: s.SubmitMetricsResult,
    Tool.GET_AGENT_REPUTATION: s.ReputationResult,
    Tool.GET_ANALYTICS: s.AnalyticsResult,
    Tool.SEARCH_AGENTS_BY_METRICS: s.AgentSearchResult,
    Tool.GET_LEADERBOARD: s.LeaderboardResult,
    Tool.CREATE_SLA: s.CreateSlaResult,
    Tool.CHECK_SLA_COMPLIANCE: s.SlaComplianceResult,
    Tool.GET_SLA_VIOLATIONS: s.SlaViolationsResult,
    Tool.SEND_MESSAGE: s.MessageResult,
    Tool.CREATE_DISPUTE: s.DisputeResult,
    Tool.RESOLVE_DISPUTE: s.DisputeResult,
    Tool.REGISTER_SERVICE: s.ServiceResult,
    Tool.SEARCH_SERVICES: s.ServiceSearchResult,
    Tool.BEST_MATCH: s.BestMatchResult,
    Tool.CREATE_AUDIT_TRAIL: s.AuditTrailResult,
    Tool.GET_COMPLIANCE_REPORT: s.ComplianceReportResult,
    Tool.CHECK_RATE_LIMIT: s.RateLimitResult,
    Tool.FREEZE_WALLET: s.WalletFreezeResult,
    Tool.UNFREEZE_WALLET: s.WalletFreezeResult,
    Tool.TRANSFER_FUNDS: s.TransactionResult,
    Tool.DEREGISTER_AGENT: s.DeregisterAgentResult,
}


# Tools whose repeat would silently do the thing twice (charge, move money,
# send, file). After a failure that may have reached the tool (a timeout, a
# dropped connection, a 5xx other than 503) they are not retried: the caller
# gets the error and checks the state first. Repeats of the other tools are
# harmless or refused by the gateway (409 for a second wallet or identity).
REPEAT_UNSAFE: frozenset[str] = frozenset(
    {
        Tool.RECORD_TRANSACTION,
        Tool.TRANSFER_FUNDS,
        Tool.SEND_MESSAGE,
        Tool.CREATE_DISPUTE,
        Tool.CREATE_AUDIT_TRAIL,
        Tool.BUILD_CLAIM_CHAIN,
    }
)


@dataclass(frozen=True, slots=True)
class ToolCall(Generic[OutT]):
    tool: str
    input: Mapping[str, Any]
    output: type[OutT] = field(repr=False)


def money(value: MoneyArg) -> str:
    """A decimal string for the wire; floats are refused (they already lost cents)."""
    if isinstance(value, bool) or not isinstance(value, Decimal | str | int):
        raise TypeError(f"money must be Decimal, str or int, not {type(value).__name__}")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    return format(amount, "f")


def _drop_none(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


# identity


def register_agent(
    agent_id: str,
    tier: str,
    capabilities: Sequence[str],
    metadata: Mapping[str, Any] | None = None,
) -> ToolCall[s.RegisterAgentResult]:
    return ToolCall(
        Tool.REGISTER_AGENT,
        {
            "agent_id": agent_id,
            "tier": tier,
            "capabilities": list(capabilities),
            "metadata": dict(metadata or {}),
        },
        s.RegisterAgentResult,
    )


def rotate_agent_key(agent_id: str) -> ToolCall[s.RegisterAgentResult]:
    return ToolCall(
        Tool.REGISTER_AGENT, {"agent_id": agent_id, "rotate_key": True}, s.RegisterAgentResult
    )


def upgrade_agent_tier(agent_id: str, tier: str) -> ToolCall[s.RegisterAgentResult]:
    return ToolCall(
        Tool.REGISTER_AGENT,
        {"agent_id": agent_id, "tier": tier, "upgrade": True},
        s.RegisterAgentResult,
    )


def build_claim_chain(
    agent_id: str, claims: Sequence[Mapping[str, Any] | str]
) -> ToolCall[s.ClaimChainResult]:
    return ToolCall(
        Tool.BUILD_CLAIM_CHAIN,
        {"agent_id": agent_id, "claims": [c if isinstance(c, str) else dict(c) for c in claims]},
        s.ClaimChainResult,
    )


def deregister_agent(agent_id: str, reason: str) -> ToolCall[s.DeregisterAgentResult]:
    return ToolCall(
        Tool.DEREGISTER_AGENT, {"agent_id": agent_id, "reason": reason}, s.DeregisterAgentResult
    )


# billing and payments


def create_wallet(agent_id: str, initial_balance: MoneyArg) -> ToolCall[s.WalletResult]:
    return ToolCall(
        Tool.CREATE_WALLET,
        {"agent_id": agent_id, "initial_balance": money(initial_balance)},
        s.WalletResult,
    )


def get_balance(agent_id: str) -> ToolCall[s.BalanceResult]:
    return ToolCall(Tool.GET_BALANCE, {"agent_id": agent_id}, s.BalanceResult)


def estimate_cost(tool_name: str, input_size: int) -> ToolCall[s.CostEstimate]:
    return ToolCall(
        Tool.ESTIMATE_COST, {"tool_name": tool_name, "input_size": input_size}, s.CostEstimate
    )


def estimate_tier_change(
    agent_id: str, new_tier: str, projected_volume: int
) -> ToolCall[s.TierChangeEstimate]:
    return ToolCall(
        Tool.ESTIMATE_COST,
        {"agent_id": agent_id, "new_tier": new_tier, "projected_volume": projected_volume},
        s.TierChangeEstimate,
    )


def get_volume_discount(agent_id: str) -> ToolCall[s.VolumeDiscountResult]:
    return ToolCall(Tool.GET_VOLUME_DISCOUNT, {"agent_id": agent_id}, s.VolumeDiscountResult)


def convert_currency(
    amount: MoneyArg, from_currency: str, to_currency: str
) -> ToolCall[s.ConversionResult]:
    return ToolCall(
        Tool.CONVERT_CURRENCY,
        {"amount": money(amount), "from_currency": from_currency, "to_currency": to_currency},
        s.ConversionResult,
    )


def record_transaction(
    agent_id: str,
    task_id: str,
    tool: str,
    cost: MoneyArg,
    timestamp: datetime | None = None,
) -> ToolCall[s.TransactionResult]:
    when = timestamp or datetime.now(UTC)
    return ToolCall(
        Tool.RECORD_TRANSACTION,
        {
            "agent_id": agent_id,
            "task_id": task_id,
            "tool": tool,
            "cost": money(cost),
            "timestamp": when.isoformat(),
        },
        s.TransactionResult,
    )


def freeze_wallet(agent_id: str, reason: str) -> ToolCall[s.WalletFreezeResult]:
    return ToolCall(
        Tool.FREEZE_WALLET, {"agent_id": agent_id, "reason": reason}, s.WalletFreezeResult
    )


def unfreeze_wallet(agent_id: str, reason: str) -> ToolCall[s.WalletFreezeResult]:
    return ToolCall(
        Tool.UNFREEZE_WALLET, {"agent_id": agent_id, "reason": reason}, s.WalletFreezeResult
    )


def transfer_funds(
    from_agent_id: str, to: str, amount: MoneyArg | Literal["all"]
) -> ToolCall[s.TransactionResult]:
    """Move ``amount`` (or ``"all"``: the whole balance, for retirement) to an agent or treasury."""
    return ToolCall(
        Tool.TRANSFER_FUNDS,
        {
            "from_agent_id": from_agent_id,
            "to": to,
            "amount": "all" if amount == "all" else money(amount),
        },
        s.TransactionResult,
    )


# trust


def submit_metrics(agent_id: str, metrics: Mapping[str, Any]) -> ToolCall[s.SubmitMetricsResult]:
    return ToolCall(
        Tool.SUBMIT_METRICS, {"agent_id": agent_id, "metrics": dict(metrics)}, s.SubmitMetricsResult
    )


def get_agent_reputation(agent_id: str) -> ToolCall[s.ReputationResult]:
    return ToolCall(Tool.GET_AGENT_REPUTATION, {"agent_id": agent_id}, s.ReputationResult)


def get_analytics(
    agent_id: str, time_range: str = "1h", metrics: Sequence[str] | None = None
) -> ToolCall[s.AnalyticsResult]:
    return ToolCall(
        Tool.GET_ANALYTICS,
        _drop_none(
            agent_id=agent_id,
            time_range=time_range,
            metrics=list(metrics) if metrics is not None else None,
        ),
        s.AnalyticsResult,
    )


def search_agents_by_metrics(
    prefix: str, metrics: Sequence[str] | None = None
) -> ToolCall[s.AgentSearchResult]:
    return ToolCall(
        Tool.SEARCH_AGENTS_BY_METRICS,
        _drop_none(prefix=prefix, metrics=list(metrics) if metrics is not None else None),
        s.AgentSearchResult,
    )


def get_leaderboard(category: str, fleet: str) -> ToolCall[s.LeaderboardResult]:
    return ToolCall(
        Tool.GET_LEADERBOARD, {"category": category, "fleet": fleet}, s.LeaderboardResult
    )


# sla


def create_sla(
    agent_id: str,
    terms: Mapping[str, Any] | None = None,
    *,
    template: str | None = None,
) -> ToolCall[s.CreateSlaResult]:
    """Terms, a named template, or a template with some terms overridden."""
    if terms is None and template is None:
        raise ValueError("pass terms, a template, or both")
    return ToolCall(
        Tool.CREATE_SLA,
        _drop_none(
            agent_id=agent_id,
            template=template,
            terms=dict(terms) if terms is not None else None,
        ),
        s.CreateSlaResult,
    )


def check_sla_compliance(agent_id: str) -> ToolCall[s.SlaComplianceResult]:
    return ToolCall(Tool.CHECK_SLA_COMPLIANCE, {"agent_id": agent_id}, s.SlaComplianceResult)


def get_sla_violations(
    agent_id: str | None = None,
    *,
    fleet_prefix: str | None = None,
    period: str | None = None,
) -> ToolCall[s.SlaViolationsResult]:
    """One agent's violations, or a fleet segment's over a period."""
    if (agent_id is None) == (fleet_prefix is None):
        raise ValueError("pass either agent_id or fleet_prefix")
    return ToolCall(
        Tool.GET_SLA_VIOLATIONS,
        _drop_none(agent_id=agent_id, fleet_prefix=fleet_prefix, period=period),
        s.SlaViolationsResult,
    )


# messaging, disputes


def send_message(
    to: str,
    subject: str,
    body: str,
    priority: str | None = None,
    requires_response: bool | None = None,
    *,
    sender: str | None = None,
) -> ToolCall[s.MessageResult]:
    """``sender`` names the sending agent on an admin-key call (an agent key speaks for itself)."""
    fields = _drop_none(
        to=to,
        subject=subject,
        body=body,
        priority=priority,
        requires_response=requires_response,
    )
    if sender is not None:
        fields["from"] = sender
    return ToolCall(Tool.SEND_MESSAGE, fields, s.MessageResult)


def create_dispute(
    agent_id: str, counterparty: str, reason: str, details: Mapping[str, Any] | str
) -> ToolCall[s.DisputeResult]:
    return ToolCall(
        Tool.CREATE_DISPUTE,
        {
            "agent_id": agent_id,
            "counterparty": counterparty,
            "reason": reason,
            "details": details if isinstance(details, str) else dict(details),
        },
        s.DisputeResult,
    )


def resolve_dispute(
    dispute_id: str, resolution: str, amount: MoneyArg, notes: str
) -> ToolCall[s.DisputeResult]:
    return ToolCall(
        Tool.RESOLVE_DISPUTE,
        {
            "dispute_id": dispute_id,
            "resolution": resolution,
            "amount": money(amount),
            "notes": notes,
        },
        s.DisputeResult,
    )


# marketplace


def register_service(
    agent_id: str, capabilities: Sequence[str], pricing: Mapping[str, Any]
) -> ToolCall[s.ServiceResult]:
    return ToolCall(
        Tool.REGISTER_SERVICE,
        {
            "agent_id": agent_id,
            "capabilities": list(capabilities),
            "pricing": dict(pricing),
        },
        s.ServiceResult,
    )


def search_services(
    capabilities: Sequence[str],
    min_reputation: float | None = None,
    max_cost: MoneyArg | None = None,
) -> ToolCall[s.ServiceSearchResult]:
    return ToolCall(
        Tool.SEARCH_SERVICES,
        _drop_none(
            capabilities=list(capabilities),
            min_reputation=min_reputation,
            max_cost=money(max_cost) if max_cost is not None else None,
        ),
        s.ServiceSearchResult,
    )


def best_match(
    requirements: Mapping[str, Any], candidates: Sequence[str] | None = None
) -> ToolCall[s.BestMatchResult]:
    return ToolCall(
        Tool.BEST_MATCH,
        _drop_none(
            requirements=dict(requirements),
            candidates=list(candidates) if candidates is not None else None,
        ),
        s.BestMatchResult,
    )


# compliance, platform


def create_audit_trail(
    agent_id: str,
    action: str,
    details: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> ToolCall[s.AuditTrailResult]:
    return ToolCall(
        Tool.CREATE_AUDIT_TRAIL,
        {
            "agent_id": agent_id,
            "action": action,
            "details": dict(details),
            "metadata": dict(metadata or {}),
        },
        s.AuditTrailResult,
    )


def get_compliance_report(
    fleet_prefix: str, period: str, articles: Sequence[str | int]
) -> ToolCall[s.ComplianceReportResult]:
    return ToolCall(
        Tool.GET_COMPLIANCE_REPORT,
        {"fleet_prefix": fleet_prefix, "period": period, "articles": list(articles)},
        s.ComplianceReportResult,
    )


def check_rate_limit(fleet: str) -> ToolCall[s.RateLimitResult]:
    return ToolCall(Tool.CHECK_RATE_LIMIT, {"fleet": fleet}, s.RateLimitResult)


__all__ = [
    "OUTPUT_MODELS",
    "REPEAT_UNSAFE",
    "Tool",
    "ToolCall",
    "best_match",
    "build_claim_chain",
    "check_rate_limit",
    "check_sla_compliance",
    "convert_currency",
    "create_audit_trail",
    "create_dispute",
    "create_sla",
    "create_wallet",
    "deregister_agent",
    "estimate_cost",
    "estimate_tier_change",
    "freeze_wallet",
    "get_agent_reputation",
    "get_analytics",
    "get_balance",
    "get_compliance_report",
    "get_leaderboard",
    "get_sla_violations",
    "get_volume_discount",
    "money",
    "record_transaction",
    "register_agent",
    "register_service",
    "resolve_dispute",
    "rotate_agent_key",
    "search_agents_by_metrics",
    "search_services",
    "send_message",
    "submit_metrics",
    "transfer_funds",
    "unfreeze_wallet",
    "upgrade_agent_tier",
]
