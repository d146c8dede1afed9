"""The catalogue: every gateway operation the project calls, as a typed :class:`Operation`.

Each builder takes typed arguments and returns an ``Operation[Answer]`` that
either client runs::

    balance = client.run(operations.get_balance("cs-triage-0001-1a2b3c4d"))

An operation carries the REST route (method, formatted path, query, body),
the answer model, the default :class:`~fleet.gateway.keys.Auth` the gateway's
ownership rules call for (any builder takes ``auth=`` to override it), whether
it moves money (then an ``Idempotency-Key`` always goes with it) and whether it
is safe to send twice. ``name`` is the gateway's tool name; breakers, counters
and traces are keyed by it. Money arguments take ``Decimal`` (or a decimal
string / int) and go on the wire as strings with at most 2 decimal places.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

from fleet.gateway import schemas as s
from fleet.gateway.keys import Auth

OutT = TypeVar("OutT", bound=s.GatewayOutput)
MoneyArg = Decimal | str | int
Method = Literal["GET", "POST", "PUT", "DELETE"]

_CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Operation(Generic[OutT]):
    name: str
    method: Method
    path: str
    answer: type[OutT]
    auth: Auth
    query: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, Any] | None = None
    moves_money: bool = False
    idempotent: bool = False
    # The agent the operation is about (charges are reported against it).
    agent_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def money(value: MoneyArg) -> str:
    """``value`` as the gateway's CREDITS text: finite, non-negative, at most 2 dp."""
    if isinstance(value, bool | float):
        raise TypeError(f"money must be Decimal, str or int, not {type(value).__name__}")
    try:
        amount = Decimal(value) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise ValueError(f"not an amount: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"amount must be finite and not negative: {value!r}")
    if amount != amount.quantize(_CENT):
        raise ValueError(f"amount has more than 2 decimal places: {value!r}")
    return format(amount.quantize(_CENT), "f")


def _seg(value: str) -> str:
    # Agent ids match ^[a-zA-Z0-9][a-zA-Z0-9._-]*$; anything else is refused by the
    # gateway, and a quoted '/' would be rejected as an encoded separator anyway.
    if not value:
        raise ValueError("path parameter is empty")
    return quote(value, safe="")


def _query(**params: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, Decimal):
            out[name] = format(value, "f")
        else:
            out[name] = str(value)
    return out


def _figures(metrics: Mapping[str, Decimal | int]) -> dict[str, int | float]:
    # Metric values must be JSON numbers (the gateway's submit route fails on strings);
    # they are measurements, not money, and a float keeps their shortest decimal text.
    return {name: v if isinstance(v, int) else float(v) for name, v in metrics.items()}


def _body(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _wallet(agent_id: str, tail: str) -> str:
    return f"/v1/billing/wallets/{_seg(agent_id)}/{tail}"


# identity


def register(agent_id: str, *, auth: Auth = Auth.NONE) -> Operation[s.RegisterResult]:
    """A new agent with a free key and a 500-credit wallet; AlreadyExists if the id is taken."""
    return Operation(
        "register_agent",
        "POST",
        "/v1/register",
        s.RegisterResult,
        auth,
        body={"agent_id": agent_id},
        agent_id=agent_id,
    )


def get_identity(agent_id: str, *, auth: Auth = Auth.ANY) -> Operation[s.IdentityResult]:
    return Operation(
        "get_agent_identity",
        "GET",
        f"/v1/identity/agents/{_seg(agent_id)}",
        s.IdentityResult,
        auth,
        idempotent=True,
        agent_id=agent_id,
    )


def set_identity_key(
    agent_id: str, public_key: str, *, auth: Auth | None = None
) -> Operation[s.IdentityResult]:
    """Make ``public_key`` (64 hex) the agent's identity key: created if there is no
    identity, replaced if the gateway made one at registration (the agent itself or
    the admin may); the same key again changes nothing."""
    # The gateway's tool is register_agent; that name already stands for /v1/register here.
    return Operation(
        "register_identity",
        "POST",
        "/v1/identity/agents",
        s.IdentityResult,
        auth or Auth.operator(agent_id),
        body={"agent_id": agent_id, "public_key": public_key},
        idempotent=True,
        agent_id=agent_id,
    )


def build_claim_chain(agent_id: str, *, auth: Auth | None = None) -> Operation[s.ClaimChainResult]:
    """Needs a pro key."""
    return Operation(
        "build_claim_chain",
        "POST",
        f"/v1/identity/agents/{_seg(agent_id)}/claim-chains",
        s.ClaimChainResult,
        auth or Auth.own(agent_id),
        agent_id=agent_id,
    )


def get_claim_chains(
    agent_id: str, limit: int = 10, *, auth: Auth = Auth.ANY
) -> Operation[s.ClaimChainsResult]:
    return Operation(
        "get_claim_chains",
        "GET",
        f"/v1/identity/agents/{_seg(agent_id)}/claim-chains",
        s.ClaimChainsResult,
        auth,
        query=_query(limit=limit),
        idempotent=True,
        agent_id=agent_id,
    )


def get_claims(agent_id: str, *, auth: Auth = Auth.ANY) -> Operation[s.ClaimsResult]:
    return Operation(
        "get_verified_claims",
        "GET",
        f"/v1/identity/agents/{_seg(agent_id)}/claims",
        s.ClaimsResult,
        auth,
        idempotent=True,
        agent_id=agent_id,
    )


def submit_metrics(
    agent_id: str,
    metrics: Mapping[str, Decimal | int],
    data_source: str = "self_reported",
    *,
    auth: Auth | None = None,
) -> Operation[s.SubmitMetricsResult]:
    """Signed claims from the agent's figures; needs a pro key."""
    return Operation(
        "submit_metrics",
        "POST",
        f"/v1/identity/agents/{_seg(agent_id)}/metrics",
        s.SubmitMetricsResult,
        auth or Auth.own(agent_id),
        body={"metrics": _figures(metrics), "data_source": data_source},
        agent_id=agent_id,
    )


def ingest_metrics(
    agent_id: str, metrics: Mapping[str, Decimal | int], *, auth: Auth | None = None
) -> Operation[s.IngestResult]:
    """Points on the agent's time series (any tier); unknown names are counted as rejected."""
    return Operation(
        "ingest_metrics",
        "POST",
        "/v1/identity/metrics/ingest",
        s.IngestResult,
        auth or Auth.own(agent_id),
        body={"agent_id": agent_id, "metrics": _figures(metrics)},
        agent_id=agent_id,
    )


def query_metrics(
    agent_id: str,
    metric_name: str,
    since: float | None = None,
    limit: int = 1,
    *,
    auth: Auth = Auth.ANY,
) -> Operation[s.MetricSeries]:
    return Operation(
        "query_metrics",
        "GET",
        "/v1/identity/metrics",
        s.MetricSeries,
        auth,
        query=_query(agent_id=agent_id, metric_name=metric_name, since=since, limit=limit),
        idempotent=True,
        agent_id=agent_id,
    )


def get_reputation(agent_id: str, *, auth: Auth = Auth.ANY) -> Operation[s.ReputationResult]:
    return Operation(
        "get_agent_reputation",
        "GET",
        f"/v1/identity/agents/{_seg(agent_id)}/reputation",
        s.ReputationResult,
        auth,
        idempotent=True,
        agent_id=agent_id,
    )


# billing


def get_balance(
    agent_id: str, currency: str | None = None, *, auth: Auth | None = None
) -> Operation[s.BalanceResult]:
    return Operation(
        "get_balance",
        "GET",
        _wallet(agent_id, "balance"),
        s.BalanceResult,
        auth or Auth.operator(agent_id),
        query=_query(currency=currency),
        idempotent=True,
        agent_id=agent_id,
    )


def deposit(
    agent_id: str, amount: MoneyArg, description: str, *, auth: Auth | None = None
) -> Operation[s.DepositResult]:
    return Operation(
        "deposit",
        "POST",
        _wallet(agent_id, "deposit"),
        s.DepositResult,
        auth or Auth.operator(agent_id),
        body={"amount": money(amount), "description": description},
        moves_money=True,
        agent_id=agent_id,
    )


def withdraw(
    agent_id: str, amount: MoneyArg, description: str, *, auth: Auth | None = None
) -> Operation[s.WithdrawResult]:
    return Operation(
        "withdraw",
        "POST",
        _wallet(agent_id, "withdraw"),
        s.WithdrawResult,
        auth or Auth.operator(agent_id),
        body={"amount": money(amount), "description": description},
        moves_money=True,
        agent_id=agent_id,
    )


def set_budget(
    agent_id: str,
    daily_cap: MoneyArg,
    monthly_cap: MoneyArg | None = None,
    alert_threshold: Decimal | None = None,
    *,
    auth: Auth | None = None,
) -> Operation[s.BudgetCapResult]:
    body = _body(
        daily_cap=money(daily_cap),
        monthly_cap=money(monthly_cap) if monthly_cap is not None else None,
        alert_threshold=format(alert_threshold, "f") if alert_threshold is not None else None,
    )
    return Operation(
        "set_budget_cap",
        "PUT",
        _wallet(agent_id, "budget"),
        s.BudgetCapResult,
        auth or Auth.operator(agent_id),
        body=body,
        idempotent=True,
        agent_id=agent_id,
    )


def get_budget(agent_id: str, *, auth: Auth | None = None) -> Operation[s.BudgetStatus]:
    return Operation(
        "get_budget_status",
        "GET",
        _wallet(agent_id, "budget"),
        s.BudgetStatus,
        auth or Auth.operator(agent_id),
        idempotent=True,
        agent_id=agent_id,
    )


def get_usage(
    agent_id: str, since: float | None = None, *, auth: Auth | None = None
) -> Operation[s.UsageResult]:
    return Operation(
        "get_usage_summary",
        "GET",
        _wallet(agent_id, "usage"),
        s.UsageResult,
        auth or Auth.operator(agent_id),
        query=_query(since=since),
        idempotent=True,
        agent_id=agent_id,
    )


def freeze_wallet(agent_id: str, *, auth: Auth = Auth.ADMIN) -> Operation[s.FreezeResult]:
    return Operation(
        "freeze_wallet",
        "POST",
        _wallet(agent_id, "freeze"),
        s.FreezeResult,
        auth,
        idempotent=True,
        agent_id=agent_id,
    )


def unfreeze_wallet(agent_id: str, *, auth: Auth = Auth.ADMIN) -> Operation[s.FreezeResult]:
    return Operation(
        "unfreeze_wallet",
        "POST",
        _wallet(agent_id, "unfreeze"),
        s.FreezeResult,
        auth,
        idempotent=True,
        agent_id=agent_id,
    )


def estimate_cost(
    tool_name: str, quantity: int = 1, agent_id: str | None = None, *, auth: Auth = Auth.ANY
) -> Operation[s.EstimateResult]:
    return Operation(
        "estimate_cost",
        "GET",
        "/v1/billing/estimate",
        s.EstimateResult,
        auth,
        query=_query(tool_name=tool_name, quantity=quantity, agent_id=agent_id),
        idempotent=True,
        agent_id=agent_id,
    )


def get_volume_discount(
    agent_id: str, tool_name: str, quantity: int, *, auth: Auth | None = None
) -> Operation[s.DiscountResult]:
    return Operation(
        "get_volume_discount",
        "GET",
        "/v1/billing/discounts",
        s.DiscountResult,
        auth or Auth.operator(agent_id),
        query=_query(agent_id=agent_id, tool_name=tool_name, quantity=quantity),
        idempotent=True,
        agent_id=agent_id,
    )


def exchange_rate(
    from_currency: str, to_currency: str, *, auth: Auth = Auth.ANY
) -> Operation[s.ExchangeRate]:
    return Operation(
        "get_exchange_rate",
        "GET",
        "/v1/billing/exchange-rates",
        s.ExchangeRate,
        auth,
        query=_query(from_currency=from_currency, to_currency=to_currency),
        idempotent=True,
    )


def leaderboard(
    metric: Literal["spend", "calls", "trust_score", "revenue", "rating"],
    limit: int = 100,
    *,
    auth: Auth = Auth.ANY,
) -> Operation[s.Leaderboard]:
    return Operation(
        "get_leaderboard",
        "GET",
        "/v1/billing/leaderboard",
        s.Leaderboard,
        auth,
        query=_query(metric=metric, limit=limit),
        idempotent=True,
    )


def list_keys(agent_id: str | None = None, *, auth: Auth = Auth.ADMIN) -> Operation[s.KeyList]:
    return Operation(
        "list_api_keys",
        "GET",
        "/v1/infra/keys",
        s.KeyList,
        auth,
        query=_query(agent_id=agent_id),
        idempotent=True,
        agent_id=agent_id,
    )


def rotate_key(current_key: str, *, auth: Auth = Auth.ADMIN) -> Operation[s.RotateResult]:
    """A new key of the same tier; the current one keeps working for the gateway's grace period."""
    return Operation(
        "rotate_key",
        "POST",
        "/v1/infra/keys/rotate",
        s.RotateResult,
        auth,
        body={"current_key": current_key},
        # Sent twice, it would rotate the new key away too.
        idempotent=False,
        headers={"X-Rotate-Confirmation": "confirm"},
    )


# payments and disputes


def create_intent(
    payer: str, payee: str, amount: MoneyArg, description: str, *, auth: Auth | None = None
) -> Operation[s.IntentResult]:
    """A payment from ``payer`` (a transfer to the treasury, say); the caller pays the 2 % fee."""
    return Operation(
        "create_intent",
        "POST",
        "/v1/payments/intents",
        s.IntentResult,
        auth or Auth.own(payer),
        body={"payer": payer, "payee": payee, "amount": money(amount), "description": description},
        moves_money=True,
        agent_id=payer,
    )


def capture_intent(
    intent_id: str, *, payer: str, auth: Auth | None = None
) -> Operation[s.SettlementResult]:
    return Operation(
        "capture_intent",
        "POST",
        f"/v1/payments/intents/{_seg(intent_id)}/capture",
        s.SettlementResult,
        auth or Auth.own(payer),
        moves_money=True,
        agent_id=payer,
    )


def create_escrow(
    payer: str, payee: str, amount: MoneyArg, timeout_hours: int = 24, *, auth: Auth | None = None
) -> Operation[s.EscrowResult]:
    """Needs a pro key; the caller pays the 1.5 % fee."""
    return Operation(
        "create_escrow",
        "POST",
        "/v1/payments/escrows",
        s.EscrowResult,
        auth or Auth.own(payer),
        body={
            "payer": payer,
            "payee": payee,
            "amount": money(amount),
            "timeout_hours": timeout_hours,
        },
        moves_money=True,
        agent_id=payer,
    )


def get_escrow(escrow_id: str, *, auth: Auth = Auth.ANY) -> Operation[s.EscrowResult]:
    return Operation(
        "get_escrow",
        "GET",
        f"/v1/payments/escrows/{_seg(escrow_id)}",
        s.EscrowResult,
        auth,
        idempotent=True,
    )


def cancel_escrow(
    escrow_id: str, *, payer: str, auth: Auth | None = None
) -> Operation[s.EscrowResult]:
    return Operation(
        "cancel_escrow",
        "POST",
        f"/v1/payments/escrows/{_seg(escrow_id)}/cancel",
        s.EscrowResult,
        auth or Auth.own(payer),
        moves_money=True,
        agent_id=payer,
    )


def open_dispute(
    escrow_id: str, opener: str, reason: str, *, auth: Auth | None = None
) -> Operation[s.DisputeResult]:
    """Needs a pro key and an escrow that is still held."""
    return Operation(
        "open_dispute",
        "POST",
        "/v1/disputes",
        s.DisputeResult,
        auth or Auth.own(opener),
        body={"escrow_id": escrow_id, "opener": opener, "reason": reason},
        agent_id=opener,
    )


def respond_to_dispute(
    dispute_id: str, respondent: str, response: str, *, auth: Auth | None = None
) -> Operation[s.DisputeResult]:
    return Operation(
        "respond_to_dispute",
        "POST",
        f"/v1/disputes/{_seg(dispute_id)}/respond",
        s.DisputeResult,
        auth or Auth.own(respondent),
        body={"respondent": respondent, "response": response},
        agent_id=respondent,
    )


def resolve_dispute(
    dispute_id: str,
    resolution: Literal["refund", "release"],
    resolved_by: str,
    notes: str,
    *,
    auth: Auth = Auth.ADMIN,
) -> Operation[s.DisputeResult]:
    return Operation(
        "resolve_dispute",
        "POST",
        f"/v1/disputes/{_seg(dispute_id)}/resolve",
        s.DisputeResult,
        auth,
        body={"resolution": resolution, "resolved_by": resolved_by, "notes": notes},
        moves_money=True,
    )


def get_dispute(dispute_id: str, *, auth: Auth = Auth.ANY) -> Operation[s.DisputeResult]:
    return Operation(
        "get_dispute",
        "GET",
        f"/v1/disputes/{_seg(dispute_id)}",
        s.DisputeResult,
        auth,
        idempotent=True,
    )


# marketplace, messaging, events, trust


def register_service(
    provider_id: str,
    name: str,
    description: str,
    category: str,
    tools: Sequence[str],
    tags: Sequence[str],
    endpoint: str,
    pricing: Mapping[str, MoneyArg],
    *,
    auth: Auth | None = None,
) -> Operation[s.ServiceResult]:
    """A marketplace listing (needs a pro key); capabilities go in ``tools`` and ``tags``.
    ``pricing`` is ``{"model": "per_call" | "subscription" | "per_token", "cost": amount}``."""
    return Operation(
        "register_service",
        "POST",
        "/v1/marketplace/services",
        s.ServiceResult,
        auth or Auth.own(provider_id),
        body={
            "provider_id": provider_id,
            "name": name,
            "description": description,
            "category": category,
            "tools": list(tools),
            "tags": list(tags),
            "endpoint": endpoint,
            "pricing": {"model": str(pricing["model"]), "cost": money(pricing["cost"])},
        },
        agent_id=provider_id,
    )


def get_service(service_id: str, *, auth: Auth = Auth.ANY) -> Operation[s.ServiceResult]:
    return Operation(
        "get_service",
        "GET",
        f"/v1/marketplace/services/{_seg(service_id)}",
        s.ServiceResult,
        auth,
        idempotent=True,
    )


def deactivate_service(service_id: str, *, auth: Auth = Auth.ANY) -> Operation[s.ServiceResult]:
    """Irreversible at the gateway: a deactivated listing cannot be reactivated."""
    return Operation(
        "deactivate_service",
        "POST",
        f"/v1/marketplace/services/{_seg(service_id)}/deactivate",
        s.ServiceResult,
        auth,
        idempotent=True,
    )


def search_services(
    query: str | None = None,
    tags: Sequence[str] = (),
    max_cost: MoneyArg | None = None,
    limit: int = 20,
    *,
    auth: Auth = Auth.ANY,
) -> Operation[s.ServiceSearch]:
    return Operation(
        "search_services",
        "GET",
        "/v1/marketplace/services",
        s.ServiceSearch,
        auth,
        query=_query(
            query=query,
            tags=",".join(tags) if tags else None,
            max_cost=money(max_cost) if max_cost is not None else None,
            limit=limit,
        ),
        idempotent=True,
    )


def best_match(
    query: str,
    budget: MoneyArg | None = None,
    prefer: Literal["trust", "cost", "latency"] = "trust",
    limit: int = 5,
    *,
    auth: Auth = Auth.ANY,
) -> Operation[s.MatchResult]:
    """Costs 0.10 per call (counted against the caller's budget cap)."""
    return Operation(
        "best_match",
        "GET",
        "/v1/marketplace/match",
        s.MatchResult,
        auth,
        query=_query(
            query=query,
            budget=money(budget) if budget is not None else None,
            prefer=prefer,
            limit=limit,
        ),
        idempotent=True,
    )


MessageType = Literal[
    "text", "price_negotiation", "task_specification", "counter_offer", "accept", "reject"
]


def send_message(
    sender: str,
    recipient: str,
    message_type: MessageType,
    subject: str,
    body: str,
    metadata: Mapping[str, Any] | None = None,
    thread_id: str | None = None,
    *,
    auth: Auth | None = None,
) -> Operation[s.MessageResult]:
    return Operation(
        "send_message",
        "POST",
        "/v1/messaging/messages",
        s.MessageResult,
        auth or Auth.own(sender),
        body=_body(
            sender=sender,
            recipient=recipient,
            message_type=message_type,
            subject=subject,
            body=body,
            metadata=dict(metadata) if metadata is not None else None,
            thread_id=thread_id,
        ),
        agent_id=sender,
    )


def get_messages(
    agent_id: str, limit: int = 50, *, auth: Auth | None = None
) -> Operation[s.MessageList]:
    return Operation(
        "get_messages",
        "GET",
        "/v1/messaging/messages",
        s.MessageList,
        auth or Auth.own(agent_id),
        query=_query(agent_id=agent_id, limit=limit),
        idempotent=True,
        agent_id=agent_id,
    )


def publish_event(
    event_type: str, source: str, payload: Mapping[str, Any], *, auth: Auth = Auth.ANY
) -> Operation[s.PublishResult]:
    return Operation(
        "publish_event",
        "POST",
        "/v1/infra/events",
        s.PublishResult,
        auth,
        body={"event_type": event_type, "source": source, "payload": dict(payload)},
    )


def get_events(
    event_type: str | None = None,
    since_id: int | None = None,
    limit: int = 100,
    *,
    auth: Auth = Auth.ANY,
) -> Operation[s.EventList]:
    return Operation(
        "get_events",
        "GET",
        "/v1/infra/events",
        s.EventList,
        auth,
        query=_query(event_type=event_type, since_id=since_id, limit=limit),
        idempotent=True,
    )


def delete_trust_server(server_id: str, *, auth: Auth = Auth.ANY) -> Operation[s.DeletedResult]:
    return Operation(
        "delete_server",
        "DELETE",
        f"/v1/trust/servers/{_seg(server_id)}",
        s.DeletedResult,
        auth,
        idempotent=True,
    )
