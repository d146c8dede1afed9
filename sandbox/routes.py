"""The gateway's REST operations: one :class:`Route` per endpoint the project calls.

Each route names the gateway tool it stands for (the name the real gateway
rates, prices, tier-gates and admin-guards), its body fields (the real
request model's, unknown ones refused) and a handler that applies the real
rules: ownership (§2 of the spec), freeze, deposit caps, idempotency, money
formats. :data:`ROUTES` is also what the OpenAPI comparison test walks.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sandbox.state import (
    DEPOSIT_CAPS,
    TIER_RANK,
    Key,
    State,
    Wallet,
    key_prefix,
)
from sandbox.validate import (
    CENT,
    ZERO,
    F,
    Problem,
    Spec,
    as_float,
    bad_request,
    forbidden,
    money,
    not_found,
    plain,
    q_float,
    q_int,
)

# Tools a key below pro may not call (catalog ``tier_required``).
PRO_TOOLS = frozenset(
    {
        "submit_metrics",
        "build_claim_chain",
        "get_claim_chains",
        "search_agents_by_metrics",
        "register_service",
        "create_escrow",
        "release_escrow",
        "open_dispute",
        "respond_to_dispute",
        "resolve_dispute",
        "freeze_wallet",
        "unfreeze_wallet",
        "delete_server",
    }
)
ADMIN_TOOLS = frozenset(
    {"freeze_wallet", "unfreeze_wallet", "resolve_dispute", "rotate_key", "list_api_keys"}
)
# Behind the /v1/infra admin router, whose own guard answers first.
ADMIN_ROUTER_TOOLS = frozenset({"rotate_key", "list_api_keys"})
# tool → (flat fee) or (percent, min, max) of the body's amount.
FLAT_COSTS = {"best_match": Decimal("0.10")}
PERCENT_COSTS = {
    "create_intent": (Decimal("2.0"), Decimal("0.01"), Decimal("5.00")),
    "create_escrow": (Decimal("1.5"), Decimal("0.01"), Decimal("10.00")),
}
PER_TOOL_LIMITS = {"create_api_key": 20}
METRIC_NAMES = frozenset(
    "accuracy aum error_rate f1_score latency_ms loss max_drawdown_30d p50_latency_ms "
    "p95_latency_ms p99_latency_ms pnl_30d precision recall requests_per_second "
    "response_time_ms sharpe_30d signal_accuracy_30d success_rate task_completion_rate "
    "throughput_rps total_trades_30d uptime win_rate_30d".split()
)
LTE_METRICS = frozenset({"p99_latency_ms", "max_drawdown_30d"})
MESSAGE_TYPES = (
    "text",
    "price_negotiation",
    "task_specification",
    "counter_offer",
    "accept",
    "reject",
)
RATES_TO_CREDITS = {
    "CREDITS": Decimal(1),
    "USD": Decimal(100),
    "EUR": Decimal("108.70"),
    "GBP": Decimal("126.58"),
    "USDC": Decimal(100),
    "BTC": Decimal(6_500_000),
    "ETH": Decimal(350_000),
}
DISPUTE_DAYS = 7


def tool_cost(tool: str, body: Any) -> Decimal:
    if tool in FLAT_COSTS:
        return FLAT_COSTS[tool]
    pct = PERCENT_COSTS.get(tool)
    if pct is None or not isinstance(body, dict) or "amount" not in body:
        return ZERO
    try:
        amount = Decimal(str(body["amount"]))
    except ArithmeticError:
        return ZERO
    fee = (amount * pct[0] / 100).quantize(CENT, ROUND_HALF_UP)
    return min(max(fee, pct[1]), pct[2])


@dataclass
class Call:
    """One authenticated request, as the handlers see it."""

    state: State
    now: float
    key: Key | None
    caller: str
    tier: str
    body: dict[str, Any]
    query: Mapping[str, str]
    params: Mapping[str, str]
    cost: Decimal
    options: Any
    location: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def admin(self) -> bool:
        return self.tier == "admin"

    def own(self, agent_id: str) -> None:
        """403 unless the caller is that agent (admin keys act for anyone on REST)."""
        if not self.admin and agent_id != self.caller:
            raise forbidden()

    def wallet(self, agent_id: str) -> Wallet:
        wallet = self.state.wallets.get(agent_id)
        if wallet is None:
            raise Problem(
                404, "wallet_not_found", f"Wallet not found for agent {agent_id}", close=True
            )
        return wallet

    def path_agent(self) -> str:
        agent_id = self.params["agent_id"]
        self.own(agent_id)
        return agent_id


Handler = Callable[[Call], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    tool: str
    handler: Handler
    body: Spec | None = None
    aliases: Mapping[str, str] | None = None
    status: int = 200
    # register: no key; stream/health: keys or none, no tool pipeline.
    auth: bool = True
    # "checked": a reused key with another body is 409 and a replay has no X-Charged
    # (payment intents); "ledger": the first answer comes back whatever the body
    # (deposit, withdraw); "": the header is ignored.
    idempotency: str = ""


# --- identity ---------------------------------------------------------------------


async def get_identity(c: Call) -> dict[str, Any]:
    agent_id = c.params["agent_id"]
    agent = c.state.agents.get(agent_id)
    if agent is None:
        raise Problem(
            404,
            "not_found",
            f"Agent not found: {agent_id}. Register identity first: "
            f'POST /v1/identity/agents {{"agent_id": "{agent_id}"}}',
        )
    return {
        "agent_id": agent_id,
        "public_key": agent.public_key,
        "created_at": agent.created_at,
        "org_id": agent.org_id,
        "found": True,
    }


async def register_identity(c: Call) -> dict[str, Any]:
    agent_id = c.body["agent_id"]
    c.own(agent_id)
    agent = c.state.agents.get(agent_id)
    if agent is None:
        agent = c.state.add_agent(agent_id, c.now)
    if "public_key" in c.body:
        agent.public_key = c.body["public_key"]
        c.state.touch("agent", agent_id)
    c.location = f"/v1/identity/agents/{agent_id}"
    return {"agent_id": agent_id, "public_key": agent.public_key, "created_at": agent.created_at}


async def verify_agent(c: Call) -> dict[str, Any]:
    """Whether ``signature`` (hex) is the agent's identity key's Ed25519 signature of
    ``message`` (its UTF-8 bytes), as the real identity API checks it."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    agent_id = c.params["agent_id"]
    agent = c.state.agents.get(agent_id)
    if agent is None:
        raise Problem(404, "agent_not_found", f"Agent not found: {agent_id}")
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(agent.public_key))
        public.verify(bytes.fromhex(c.body["signature"]), c.body["message"].encode())
    except (InvalidSignature, ValueError):
        return {"valid": False}
    return {"valid": True}


async def get_reputation(c: Call) -> dict[str, Any]:
    agent_id = c.params["agent_id"]
    found = agent_id in c.state.agents
    return {
        "agent_id": agent_id,
        "payment_reliability": 0.0,
        "data_source_quality": 0.0,
        "transaction_volume_score": 0.0,
        "composite_score": 0.0,
        "confidence": 0.0,
        "found": found,
    }


async def submit_metrics(c: Call) -> dict[str, Any]:
    agent_id = c.path_agent()
    metrics = c.body["metrics"]
    unknown = sorted(set(metrics) - METRIC_NAMES)
    if unknown:
        raise Problem(
            400,
            "invalid_metric",
            f"Unsupported metric(s) {unknown}. Supported: [{', '.join(sorted(METRIC_NAMES))}]",
        )
    valid_until = c.now + DISPUTE_DAYS * 86400
    hashes = []
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Problem(400, "invalid_metric", f"Metric {name} must be a number")
        hashes.append(hashlib.sha256(f"{agent_id}:{name}:{value}:{c.now}".encode()).hexdigest())
        c.state.claims[f"{agent_id}/{name}"] = {
            "agent_id": agent_id,
            "metric_name": name,
            "claim_type": "lte" if name in LTE_METRICS else "gte",
            "bound_value": float(value),
            "valid_until": valid_until,
        }
        c.state.touch("claims", f"{agent_id}/{name}")
    data_source = c.body.get("data_source", "self_reported")
    return {
        "agent_id": agent_id,
        "commitment_hashes": hashes,
        "verified_at": c.now,
        "valid_until": valid_until,
        "data_source": data_source,
        "signature": hashlib.sha3_256("".join(hashes).encode()).hexdigest(),
    }


async def get_claims(c: Call) -> dict[str, Any]:
    agent_id = c.params["agent_id"]
    prefix = agent_id + "/"
    claims = [v for k, v in c.state.claims.items() if k.startswith(prefix)]
    return {"claims": claims}


async def build_claim_chain(c: Call) -> dict[str, Any]:
    agent_id = c.path_agent()
    prefix = agent_id + "/"
    leaves = sorted(
        hashlib.sha256(repr(sorted(v.items())).encode()).hexdigest()
        for k, v in c.state.claims.items()
        if k.startswith(prefix)
    )
    if not leaves:
        raise Problem(400, "no_claims", f"No claims to chain for agent {agent_id}")
    root = hashlib.sha256("".join(leaves).encode()).hexdigest() if len(leaves) > 1 else leaves[0]
    chain_id = c.state.next_chain
    c.state.next_chain += 1
    c.state.chains[str(chain_id)] = {
        "id": chain_id,
        "agent_id": agent_id,
        "merkle_root": root,
        "chain_length": len(leaves),
        "period_start": c.now,
        "period_end": c.now,
        "created_at": c.now,
    }
    c.state.touch("chains", str(chain_id))
    return {
        "merkle_root": root,
        "leaf_count": len(leaves),
        "period_start": c.now,
        "period_end": c.now,
        "chain_id": chain_id,
    }


async def get_claim_chains(c: Call) -> dict[str, Any]:
    agent_id = c.params["agent_id"]
    limit = q_int(c.query, "limit", 10, 1, 100)
    chains = [v for v in c.state.chains.values() if v["agent_id"] == agent_id]
    chains.sort(key=lambda v: -int(v["id"]))
    return {"chains": chains[:limit]}


async def ingest_metrics(c: Call) -> dict[str, Any]:
    agent_id = c.body["agent_id"]
    c.own(agent_id)
    accepted = rejected = 0
    series = c.state.metrics[agent_id]
    for name, value in c.body["metrics"].items():
        if (
            name not in METRIC_NAMES
            or isinstance(value, bool)
            or not isinstance(value, int | float)
        ):
            rejected += 1
            continue
        accepted += 1
        series.append(
            {
                "metric_name": name,
                "value": float(value),
                "timestamp": c.now,
                "data_source": c.body.get("data_source", "self_reported"),
            }
        )
    if len(series) > 2000:
        del series[: len(series) - 2000]
    c.state.touch("metrics", agent_id)
    return {"accepted": accepted, "rejected": rejected}


async def query_metrics(c: Call) -> dict[str, Any]:
    agent_id = c.query.get("agent_id")
    name = c.query.get("metric_name")
    if not agent_id or not name:
        raise Problem(422, "validation_error", "query.agent_id, query.metric_name: Field required")
    since = q_float(c.query, "since", 0.0) or 0.0
    limit = q_int(c.query, "limit", 100, 1, 1000)
    points = [
        {
            "agent_id": agent_id,
            "metric_name": name,
            "value": p["value"],
            "window_days": 30,
            "timestamp": p["timestamp"],
            "data_source": p["data_source"],
            "commitment_hash": None,
        }
        for p in c.state.metrics.get(agent_id, ())
        if p["metric_name"] == name and p["timestamp"] >= since
    ]
    agent = c.state.agents.get(agent_id)
    if not points and agent is not None and agent.simulated:
        value = c.state.behaviour_metrics(agent, c.now).get(name)
        if value is not None:
            points.append(
                {
                    "agent_id": agent_id,
                    "metric_name": name,
                    "value": value,
                    "window_days": 30,
                    "timestamp": c.now,
                    "data_source": "self_reported",
                    "commitment_hash": None,
                }
            )
    points.sort(key=lambda p: -float(p["timestamp"]))
    return {"data": points[:limit]}


async def search_agents(c: Call) -> dict[str, Any]:
    name = c.query.get("metric_name", "")
    lo = q_float(c.query, "min_value")
    hi = q_float(c.query, "max_value")
    limit = q_int(c.query, "limit", 50, 1, 500)
    out = []
    for claim in c.state.claims.values():
        if claim["metric_name"] != name:
            continue
        value = claim["bound_value"]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            continue
        out.append(claim)
        if len(out) >= limit:
            break
    return {"agents": out}


# --- billing --------------------------------------------------------------------------


async def get_balance(c: Call) -> dict[str, Any]:
    agent_id = c.path_agent()
    wallet = c.wallet(agent_id)
    agent = c.state.agents.get(agent_id)
    if agent is not None and agent.simulated:
        c.state.settle(agent, c.now)
    currency = c.query.get("currency")
    if currency and currency != "CREDITS":
        if currency not in RATES_TO_CREDITS:
            raise bad_request(f"Unsupported currency: {currency}")
        return {"balance": ZERO, "currency": currency}
    return {"balance": wallet.balance}


def _check_deposit_cap(c: Call, amount: Decimal) -> None:
    if c.admin:
        return
    cap = DEPOSIT_CAPS[c.tier]
    if amount > cap:
        raise Problem(
            403,
            "deposit_limit_exceeded",
            f"Deposit of {amount} exceeds {c.tier}-tier limit of {cap:,} credits",
        )


async def deposit(c: Call) -> dict[str, Any]:
    agent_id = c.path_agent()
    wallet = c.wallet(agent_id)
    amount: Decimal = c.body["amount"]
    _check_deposit_cap(c, amount)
    if wallet.frozen:
        raise Problem(403, "wallet_frozen", f"Wallet is frozen for agent {agent_id}")
    tx_id = c.state.ledger(wallet, amount, "deposit", c.body.get("description", "Deposit"), c.now)
    return {"new_balance": wallet.balance, "transaction_id": tx_id}


async def withdraw(c: Call) -> dict[str, Any]:
    agent_id = c.path_agent()
    wallet = c.wallet(agent_id)
    amount: Decimal = c.body["amount"]
    if wallet.frozen:
        raise Problem(403, "wallet_frozen", f"Wallet is frozen for agent {agent_id}")
    if amount > wallet.balance:
        raise Problem(
            402,
            "insufficient_balance",
            f"Requested {float(amount)}, available {float(wallet.balance)}",
            close=True,
        )
    c.state.ledger(wallet, -amount, "withdrawal", c.body.get("description", "Withdrawal"), c.now)
    return {"new_balance": wallet.balance}


async def freeze(c: Call) -> dict[str, Any]:
    agent_id = c.params["agent_id"]
    wallet = c.wallet(agent_id)
    wallet.frozen = True
    c.state.touch("wallet", agent_id)
    return {"agent_id": agent_id, "frozen": True}


async def unfreeze(c: Call) -> dict[str, Any]:
    agent_id = c.params["agent_id"]
    wallet = c.wallet(agent_id)
    wallet.frozen = False
    c.state.touch("wallet", agent_id)
    return {"agent_id": agent_id, "frozen": False}


async def transactions(c: Call) -> dict[str, Any]:
    agent_id = c.path_agent()
    c.wallet(agent_id)
    limit = q_int(c.query, "limit", 50, 1, 500)
    offset = q_int(c.query, "offset", 0, 0, 1_000_000)
    txs = list(reversed(c.state.transactions.get(agent_id, [])))[offset : offset + limit]
    return {
        "transactions": [
            {
                **tx,
                "agent_id": agent_id,
                "amount": money(Decimal(tx["amount"])),
                "result_snapshot": None,
                "type": tx["tx_type"],
                "timestamp": tx["created_at"],
            }
            for tx in txs
        ]
    }


async def usage(c: Call) -> dict[str, Any]:
    agent_id = c.path_agent()
    wallet = c.wallet(agent_id)
    since = q_float(c.query, "since")
    if since is None:
        cost = wallet.calls_cost
    else:
        cost = c.state.spent_since(wallet, since)
    return {"total_calls": wallet.calls, "total_cost": as_float(cost), "total_tokens": 0}


async def set_budget(c: Call) -> dict[str, Any]:
    agent_id = c.path_agent()
    wallet = c.wallet(agent_id)
    wallet.daily_cap = c.body.get("daily")
    wallet.monthly_cap = c.body.get("monthly")
    wallet.alert_threshold = c.body.get("alert_threshold", 0.8)
    c.state.touch("wallet", agent_id)
    return {
        "agent_id": agent_id,
        "daily_cap": None if wallet.daily_cap is None else as_float(wallet.daily_cap),
        "monthly_cap": None if wallet.monthly_cap is None else as_float(wallet.monthly_cap),
        "alert_threshold": wallet.alert_threshold,
    }


def budget_view(state: State, wallet: Wallet, now: float) -> dict[str, Any]:
    daily = state.spent_since(wallet, now - 86400)
    monthly = state.spent_since(wallet, now - 30 * 86400)

    def pct(spent: Decimal, cap: Decimal | None) -> float:
        return round(float(spent / cap * 100), 2) if cap else 0.0

    threshold = Decimal(str(wallet.alert_threshold or 0.8))
    caps = [(daily, wallet.daily_cap), (monthly, wallet.monthly_cap)]
    return {
        "agent_id": wallet.agent_id,
        "daily_spend": as_float(daily),
        "daily_cap": None if wallet.daily_cap is None else as_float(wallet.daily_cap),
        "daily_pct": pct(daily, wallet.daily_cap),
        "monthly_spend": as_float(monthly),
        "monthly_cap": None if wallet.monthly_cap is None else as_float(wallet.monthly_cap),
        "monthly_pct": pct(monthly, wallet.monthly_cap),
        "alert_triggered": any(cap is not None and s >= cap * threshold for s, cap in caps),
        "cap_exceeded": any(cap is not None and s > cap for s, cap in caps),
    }


async def get_budget(c: Call) -> dict[str, Any]:
    agent_id = c.path_agent()
    return budget_view(c.state, c.wallet(agent_id), c.now)


def _unit_price(tool_name: str) -> Decimal:
    if tool_name in FLAT_COSTS:
        return FLAT_COSTS[tool_name]
    from sandbox.server import KNOWN_TOOLS

    if tool_name not in KNOWN_TOOLS:
        raise Problem(404, "not_found", f"Tool not found: {tool_name}", close=True)
    return ZERO


async def estimate(c: Call) -> dict[str, Any]:
    tool_name = c.query.get("tool_name", "")
    quantity = q_int(c.query, "quantity", 1, 1, 1_000_000)
    agent_id = c.query.get("agent_id")
    if agent_id:
        c.own(agent_id)
    unit = _unit_price(tool_name)
    return {
        "tool_name": tool_name,
        "quantity": quantity,
        "unit_price": as_float(unit),
        "discount_pct": 0,
        "total_cost": as_float(unit * quantity),
    }


async def discounts(c: Call) -> dict[str, Any]:
    agent_id = c.query.get("agent_id", "")
    c.own(agent_id)
    tool_name = c.query.get("tool_name", "")
    q_int(c.query, "quantity", 1, 1, 1_000_000)
    unit = _unit_price(tool_name)
    wallet = c.state.wallets.get(agent_id)
    historical = 0
    if wallet is not None:
        historical = sum(
            1
            for tx in c.state.transactions.get(agent_id, ())
            if tx["description"] == f"gateway:{tool_name}"
        )
    return {
        "agent_id": agent_id,
        "tool_name": tool_name,
        "historical_calls": historical,
        "discount_pct": 0,
        "unit_price": as_float(unit),
        "discounted_price": unit,
    }


async def exchange_rate(c: Call) -> dict[str, Any]:
    src = c.query.get("from_currency", "")
    dst = c.query.get("to_currency", "")
    if src not in RATES_TO_CREDITS or dst not in RATES_TO_CREDITS:
        raise bad_request(f"Unsupported currency pair: {src} -> {dst}")
    rate = RATES_TO_CREDITS[src] / RATES_TO_CREDITS[dst]
    return {"from_currency": src, "to_currency": dst, "rate": f"{rate.normalize():f}"}


async def leaderboard(c: Call) -> dict[str, Any]:
    metric = c.query.get("metric", "spend")
    if metric not in ("spend", "calls", "trust_score", "revenue", "rating"):
        raise bad_request(f"Unknown metric: {metric}")
    limit = q_int(c.query, "limit", 10, 1, 100)
    hidden = ("test-", "perf-", "audit-", "stress-")
    rows: list[tuple[float, str]] = []
    for agent_id, w in c.state.wallets.items():
        if agent_id.startswith(hidden):
            continue
        if metric == "spend":
            rows.append((float(w.calls_cost), agent_id))
        elif metric == "calls":
            rows.append((float(w.calls), agent_id))
        else:
            rows.append((0.0, agent_id))
    rows.sort(key=lambda r: (-r[0], r[1]))
    return {
        "leaderboard": [
            {"rank": i + 1, "agent_id": a, "value": int(v) if metric == "calls" else v}
            for i, (v, a) in enumerate(rows[:limit])
        ]
    }


def _key_view(key: Key, owner: str) -> dict[str, Any]:
    return {
        "key_hash_prefix": key_prefix(key.key),
        "agent_id": key.agent_id,
        "owner": owner,
        "tier": key.tier,
        "scopes": key.scopes,
        "created_at": key.created_at,
        "revoked": key.revoked_at is not None,
    }


async def list_keys(c: Call) -> dict[str, Any]:
    agent_id = c.query.get("agent_id")
    if agent_id:
        keys = c.state.keys_by_agent.get(agent_id, [])
    else:
        keys = list(c.state.keys.values())
    return {"keys": [_key_view(k, "admin") for k in reversed(keys)]}


async def own_keys(c: Call) -> dict[str, Any]:
    agent_id = c.query.get("agent_id")
    if agent_id and agent_id != c.caller and not c.admin:
        raise forbidden()
    keys = c.state.keys_by_agent.get(c.caller, [])
    return {"keys": [_key_view(k, "self") for k in reversed(keys)]}


async def create_key(c: Call) -> dict[str, Any]:
    tier = c.body.get("tier", "free")
    mine = c.tier
    if (
        tier not in TIER_RANK
        or tier == "admin"
        or TIER_RANK[tier] > TIER_RANK[mine]
        or (mine == "admin" and tier == "enterprise")
    ):
        raise Problem(
            403,
            "forbidden",
            f"Tier escalation denied: your tier '{mine}' cannot create '{tier}' keys",
        )
    key = c.state.add_key(c.caller, tier, c.now)
    return {"key": key.key, "agent_id": c.caller, "tier": tier}


async def rotate_key(c: Call) -> dict[str, Any]:
    old = c.state.keys.get(c.body["current_key"])
    if old is None or old.revoked_at is not None:
        raise Problem(404, "not_found", "Key not found or already revoked", close=True)
    grace = c.options.key_grace_s
    old.revoked_at = c.now
    c.state.touch("key", old.key)
    new = c.state.add_key(old.agent_id, old.tier, c.now, old.scopes)
    return {
        "new_key": new.key,
        "tier": new.tier,
        "agent_id": new.agent_id,
        "revoked": False,
        "grace_period_seconds": int(grace),
        "grace_expires_at": int(c.now + grace),
    }


# --- payments, escrows, disputes ------------------------------------------------------


def _new_id() -> str:
    return uuid.uuid4().hex


async def create_intent(c: Call) -> dict[str, Any]:
    payer, payee = c.body["payer"], c.body["payee"]
    c.own(payer)
    amount: Decimal = c.body["amount"]
    intent_id = _new_id()
    intent = {
        "id": intent_id,
        "status": "pending",
        "payer": payer,
        "payee": payee,
        "amount": plain(amount),
        "description": c.body.get("description", ""),
        "created_at": c.now,
        "gateway_fee": money(c.cost),
    }
    c.state.intents[intent_id] = intent
    c.state.touch("intents", intent_id)
    c.location = f"/v1/payments/intents/{intent_id}"
    return {
        "id": intent_id,
        "status": "pending",
        "amount": intent["amount"],
        "currency": c.body.get("currency", "CREDITS"),
        "gateway_fee": intent["gateway_fee"],
    }


def _intent(c: Call) -> dict[str, Any]:
    intent = c.state.intents.get(c.params["intent_id"])
    if intent is None:
        raise not_found(f"Intent not found: {c.params['intent_id']}")
    return intent


async def get_intent(c: Call) -> dict[str, Any]:
    return dict(_intent(c))


def _transfer(c: Call, payer: str, payee: str, amount: Decimal, what: str) -> None:
    src = c.wallet(payer)
    dst = c.wallet(payee)
    if dst.frozen:
        raise Problem(403, "wallet_frozen", f"Wallet is frozen for agent {payee}")
    if src.balance < amount:
        raise Problem(
            402,
            "insufficient_balance",
            f"Insufficient balance: {float(src.balance)} < {float(amount)}",
            close=True,
        )
    c.state.ledger(src, -amount, "payment", f"{what} to {payee}", c.now)
    c.state.ledger(dst, amount, "payment_received", f"{what} from {payer}", c.now)


async def capture_intent(c: Call) -> dict[str, Any]:
    intent = _intent(c)
    c.own(intent["payer"])
    if intent["status"] != "pending":
        raise Problem(409, "invalid_state", f"Intent is {intent['status']}, not pending")
    amount = Decimal(intent["amount"])
    _transfer(c, intent["payer"], intent["payee"], amount, "intent")
    intent["status"] = "settled"
    settlement = _new_id()
    intent["settlement_id"] = settlement
    c.state.touch("intents", intent["id"])
    return {"id": settlement, "status": "settled", "amount": intent["amount"]}


async def create_escrow(c: Call) -> dict[str, Any]:
    payer, payee = c.body["payer"], c.body["payee"]
    c.own(payer)
    amount: Decimal = c.body["amount"]
    wallet = c.wallet(payer)
    if wallet.balance < amount:
        raise Problem(
            402,
            "insufficient_balance",
            f"Insufficient balance: {float(wallet.balance)} < {float(amount)}",
            close=True,
        )
    c.state.ledger(wallet, -amount, "escrow_hold", f"escrow to {payee}", c.now)
    escrow_id = _new_id()
    c.state.escrows[escrow_id] = {
        "id": escrow_id,
        "status": "held",
        "payer": payer,
        "payee": payee,
        "amount": plain(amount),
        "description": c.body.get("description", ""),
        "created_at": c.now,
        "timeout_at": c.now + float(c.body.get("timeout_hours", 24)) * 3600,
    }
    c.state.touch("escrows", escrow_id)
    c.location = f"/v1/payments/escrows/{escrow_id}"
    return {"id": escrow_id, "status": "held", "amount": plain(amount), "currency": "CREDITS"}


def _escrow(c: Call, escrow_id: str | None = None) -> dict[str, Any]:
    eid = escrow_id or c.params["escrow_id"]
    escrow = c.state.escrows.get(eid)
    if escrow is None:
        raise not_found(f"Escrow not found: {eid}")
    return escrow


async def get_escrow(c: Call) -> dict[str, Any]:
    escrow = _escrow(c)
    return {k: v for k, v in escrow.items() if k != "timeout_at"}


def _settle_escrow(c: Call, escrow: dict[str, Any], release: bool) -> None:
    amount = Decimal(escrow["amount"])
    target = escrow["payee"] if release else escrow["payer"]
    wallet = c.wallet(target)
    if release and wallet.frozen:
        raise Problem(403, "wallet_frozen", f"Wallet is frozen for agent {target}")
    kind = "escrow_release" if release else "escrow_refund"
    c.state.ledger(wallet, amount, kind, f"escrow {escrow['id']}", c.now)
    escrow["status"] = "released" if release else "refunded"
    c.state.touch("escrows", escrow["id"])


async def cancel_escrow(c: Call) -> dict[str, Any]:
    escrow = _escrow(c)
    c.own(escrow["payer"])
    if escrow["status"] != "held":
        raise Problem(409, "invalid_state", f"Escrow is {escrow['status']}, not held")
    _settle_escrow(c, escrow, release=False)
    return {"id": escrow["id"], "status": escrow["status"], "amount": escrow["amount"]}


async def release_escrow(c: Call) -> dict[str, Any]:
    escrow = _escrow(c)
    c.own(escrow["payer"])
    if escrow["status"] != "held":
        raise Problem(409, "invalid_state", f"Escrow is {escrow['status']}, not held")
    _settle_escrow(c, escrow, release=True)
    return {"id": escrow["id"], "status": escrow["status"], "amount": escrow["amount"]}


async def open_dispute(c: Call) -> dict[str, Any]:
    opener = c.body["opener"]
    c.own(opener)
    escrow = _escrow(c, c.body["escrow_id"])
    if escrow["status"] != "held":
        raise bad_request(f"Escrow {escrow['id']} is {escrow['status']}; only held escrows")
    if opener not in (escrow["payer"], escrow["payee"]):
        raise forbidden()
    dispute_id = _new_id()
    respondent = escrow["payee"] if opener == escrow["payer"] else escrow["payer"]
    dispute = {
        "id": dispute_id,
        "escrow_id": escrow["id"],
        "opener": opener,
        "respondent": respondent,
        "reason": c.body.get("reason", ""),
        "response": None,
        "status": "open",
        "resolution": None,
        "resolved_by": None,
        "notes": None,
        "created_at": c.now,
        "responded_at": None,
        "resolved_at": None,
        "deadline_at": c.now + DISPUTE_DAYS * 86400,
    }
    c.state.disputes[dispute_id] = dispute
    c.state.touch("disputes", dispute_id)
    c.location = f"/v1/disputes/{dispute_id}"
    return {
        k: dispute[k]
        for k in ("id", "escrow_id", "opener", "status", "reason", "created_at", "deadline_at")
    }


def _dispute(c: Call) -> dict[str, Any]:
    dispute = c.state.disputes.get(c.params["dispute_id"])
    if dispute is None:
        raise not_found(f"Dispute not found: {c.params['dispute_id']}")
    return dispute


async def respond_dispute(c: Call) -> dict[str, Any]:
    dispute = _dispute(c)
    respondent = c.body["respondent"]
    c.own(respondent)
    if respondent != dispute["respondent"]:
        raise forbidden()
    if dispute["status"] != "open":
        raise Problem(409, "invalid_state", f"Dispute is {dispute['status']}, not open")
    dispute.update(status="responded", response=c.body["response"], responded_at=c.now)
    c.state.touch("disputes", dispute["id"])
    return {
        "id": dispute["id"],
        "status": "responded",
        "respondent": respondent,
        "response": dispute["response"],
        "responded_at": c.now,
    }


async def resolve_dispute(c: Call) -> dict[str, Any]:
    dispute = _dispute(c)
    if dispute["status"] == "resolved":
        raise Problem(409, "invalid_state", "Dispute is already resolved")
    escrow = _escrow(c, dispute["escrow_id"])
    resolution = c.body["resolution"]
    if escrow["status"] == "held":
        _settle_escrow(c, escrow, release=resolution == "release")
    dispute.update(
        status="resolved",
        resolution=resolution,
        resolved_by=c.caller,
        notes=c.body.get("notes", ""),
        resolved_at=c.now,
    )
    c.state.touch("disputes", dispute["id"])
    return {
        k: dispute[k] for k in ("id", "status", "resolution", "resolved_by", "notes", "resolved_at")
    }


async def get_dispute(c: Call) -> dict[str, Any]:
    return dict(_dispute(c))


async def list_disputes(c: Call) -> dict[str, Any]:
    agent_id = c.query.get("agent_id", c.caller)
    c.own(agent_id)
    limit = q_int(c.query, "limit", 50, 1, 500)
    found = [d for d in c.state.disputes.values() if agent_id in (d["opener"], d["respondent"])]
    return {"disputes": found[-limit:]}


# --- marketplace, messaging, events, trust ----------------------------------------------


def _service_view(s: dict[str, Any], status: bool = True) -> dict[str, Any]:
    out = {
        "id": s["id"],
        "provider_id": s["provider_id"],
        "name": s["name"],
        "description": s["description"],
        "category": s["category"],
        "pricing": {"model": s["model"], "cost": money(Decimal(s["cost"])), "currency": "credits"},
        "tags": s["tags"],
        "tools": s.get("tools", []),
        "endpoint": s["endpoint"],
        "trust_score": s.get("trust_score", 0.0),
    }
    if status:
        out["status"] = s["status"]
    return out


async def register_service(c: Call) -> dict[str, Any]:
    pricing = c.body.get("pricing") or {}
    try:
        cost = Decimal(str(pricing.get("cost", 0)))
    except ArithmeticError:
        raise Problem(
            422, "validation_error", "body.pricing.cost: Input should be a valid decimal"
        ) from None
    service_id = "svc-" + uuid.uuid4().hex[:12]
    c.state.services[service_id] = {
        "id": service_id,
        "provider_id": c.body["provider_id"],
        "name": c.body["name"],
        "description": c.body["description"],
        "category": c.body["category"],
        "tools": c.body.get("tools", []),
        "tags": c.body.get("tags", []),
        "endpoint": c.body.get("endpoint", ""),
        "model": str(pricing.get("model", "per_call")),
        "cost": str(cost),
        "status": "active",
        "created_at": c.now,
    }
    c.state.touch("services", service_id)
    c.location = f"/v1/marketplace/services/{service_id}"
    return {"id": service_id, "name": c.body["name"], "status": "active"}


def _service(c: Call) -> dict[str, Any]:
    service = c.state.services.get(c.params["service_id"])
    if service is None:
        raise not_found(f"Service not found: {c.params['service_id']}")
    return service


async def get_service(c: Call) -> dict[str, Any]:
    return _service_view(_service(c))


async def update_service(c: Call) -> dict[str, Any]:
    service = _service(c)
    for name in ("name", "description", "category", "tags", "endpoint"):
        if name in c.body:
            service[name] = c.body[name]
    c.state.touch("services", service["id"])
    return _service_view(service)


async def deactivate_service(c: Call) -> dict[str, Any]:
    service = _service(c)
    service["status"] = "inactive"
    c.state.touch("services", service["id"])
    return {"id": service["id"], "name": service["name"], "status": "inactive"}


def _matches(c: Call, query: str, tags: list[str], max_cost: float | None) -> list[dict[str, Any]]:
    q = query.lower()
    out = []
    for s in c.state.services.values():
        if s["status"] != "active":
            continue
        if (
            q
            and q not in s["name"].lower()
            and q not in s["description"].lower()
            and not any(q in t.lower() for t in s["tags"] + s["tools"])
        ):
            continue
        if tags and not set(tags) & set(s["tags"]):
            continue
        if max_cost is not None and float(s["cost"]) > max_cost:
            continue
        out.append(s)
    return out


async def search_services(c: Call) -> dict[str, Any]:
    tags = [t for t in c.query.get("tags", "").split(",") if t]
    limit = q_int(c.query, "limit", 20, 1, 100)
    offset = q_int(c.query, "offset", 0, 0, 1_000_000)
    found = _matches(c, c.query.get("query", ""), tags, q_float(c.query, "max_cost"))
    category = c.query.get("category")
    if category:
        found = [s for s in found if s["category"] == category]
    return {"services": [_service_view(s, status=False) for s in found[offset : offset + limit]]}


async def best_match(c: Call) -> dict[str, Any]:
    query = c.query.get("query", "")
    budget = q_float(c.query, "budget")
    limit = q_int(c.query, "limit", 5, 1, 50)
    ranked: list[dict[str, Any]] = []
    for s in _matches(c, query, [], budget):
        reasons = []
        score = 20.0
        if query and query.lower() in s["description"].lower():
            reasons.append("description_match")
            score += 10
        for tag in s["tags"]:
            if query and query.lower() in tag.lower():
                reasons.append(f"tag_match:{tag}")
                score += 5
        if float(s["cost"]) <= 0.1:
            reasons.append("low_cost")
            score += 4.75
        view = _service_view(s, status=False)
        for name in ("category", "tags", "endpoint"):
            view.pop(name)
        ranked.append({"service": view, "rank_score": score, "match_reasons": reasons})
    ranked.sort(key=lambda m: -float(m["rank_score"]))
    return {"matches": ranked[:limit]}


async def send_message(c: Call) -> dict[str, Any]:
    sender = c.body["sender"]
    c.own(sender)
    message_id = _new_id()
    message = {
        "id": message_id,
        "sender": sender,
        "recipient": c.body["recipient"],
        "message_type": c.body["message_type"],
        "subject": c.body.get("subject", ""),
        "body": c.body.get("body", ""),
        "metadata": c.body.get("metadata") or {},
        "thread_id": c.body.get("thread_id"),
        "created_at": c.now,
        "read_at": None,
        "encrypted": False,
        "encryption_metadata": None,
    }
    c.state.messages[message_id] = message
    c.state.touch("messages", message_id)
    return {
        k: message[k]
        for k in ("id", "sender", "recipient", "message_type", "thread_id", "created_at")
    }


async def get_messages(c: Call) -> dict[str, Any]:
    agent_id = c.query.get("agent_id", "")
    c.own(agent_id)
    limit = q_int(c.query, "limit", 50, 1, 500)
    thread = c.query.get("thread_id")
    found = [
        m
        for m in c.state.messages.values()
        if agent_id in (m["sender"], m["recipient"])
        and (thread is None or m["thread_id"] == thread)
    ]
    return {"messages": list(reversed(found))[:limit]}


async def publish_event(c: Call) -> dict[str, Any]:
    event = c.state.publish(
        c.body["event_type"], c.body["source"], c.body.get("payload") or {}, c.now
    )
    c.options.notify()
    return {"event_id": event["id"]}


def events_after(
    state: State, since_id: int, event_type: str | None, source: str | None, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Events after ``since_id`` that match, and the last id looked at.

    As the real bus: ``limit`` bounds the events of ``event_type`` read in one go
    (its SQL), and ``source`` is filtered after, so a filtered stream still moves
    ``limit`` events further per poll.
    """
    out: list[dict[str, Any]] = []
    events = state.events
    if not events or events[-1]["id"] <= since_id:
        return out, since_id
    # Ids are dense and increasing: start at the first one after since_id.
    start = max(0, since_id - events[0]["id"] + 1)
    last = since_id
    read = 0
    for i in range(start, len(events)):
        e = events[i]
        last = e["id"]
        if event_type and e["event_type"] != event_type:
            continue
        read += 1
        if not source or e["source"] == source:
            out.append(e)
        if read >= limit:
            break
    return out, last


async def get_events(c: Call) -> dict[str, Any]:
    since = q_int(c.query, "since_id", 0, 0, 2**62)
    limit = q_int(c.query, "limit", 100, 1, 1000)
    c.state.expire_events(c.now)
    found, _ = events_after(c.state, since, c.query.get("event_type"), None, limit)
    return {"events": found}


async def register_server(c: Call) -> dict[str, Any]:
    server_id = c.body.get("server_id") or "srv-" + uuid.uuid4().hex[:12]
    server = {
        "id": server_id,
        "name": c.body["name"],
        "url": c.body["url"],
        "transport_type": c.body.get("transport_type", "http"),
    }
    c.state.servers[server_id] = server
    c.state.touch("servers", server_id)
    c.location = f"/v1/trust/servers/{server_id}"
    return dict(server)


async def delete_server(c: Call) -> dict[str, Any]:
    server_id = c.params["server_id"]
    if c.state.servers.pop(server_id, None) is None:
        # As the real gateway: an unknown server is a 404 problem, not {"deleted": false}.
        raise Problem(404, "server_not_found", f"Server not found: {server_id}")
    c.state.store.delete("servers", server_id)
    return {"deleted": True}


async def register(c: Call) -> dict[str, Any]:
    """POST /v1/register: checked by hand (length only, as the real one), answered raw."""
    body = c.body
    agent_id = body.get("agent_id") if isinstance(body, dict) else None
    if (
        not isinstance(body, dict)
        or set(body) != {"agent_id"}
        or not isinstance(agent_id, str)
        or not 1 <= len(agent_id) <= 128
    ):
        raise bad_request("Invalid request body")
    # The wallet says whether it is registered: an identity may have been made first.
    if agent_id in c.state.wallets:
        raise Problem(409, "already_exists", f"Agent '{agent_id}' is already registered")
    agent, key = c.state.register(agent_id, c.now)
    return {
        "agent_id": agent_id,
        "api_key": key.key,
        "tier": "free",
        "balance": 500.0,
        "identity_registered": True,
        "public_key": agent.public_key,
        "next_steps": {"onboarding": "/v1/onboarding", "docs": "/docs", "pricing": "/v1/pricing"},
    }


# --- the table --------------------------------------------------------------------------

_credits = F("credits", required=True, positive=True)
_agent = F("agent_id", required=True)
_opt_str = F("str")

W = "/v1/billing/wallets/{agent_id}"
ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/register", "register", register, auth=False, status=201),
    Route(
        "POST",
        "/v1/identity/agents",
        "register_agent",
        register_identity,
        {
            "agent_id": _agent,
            "public_key": _opt_str,
            "name": _opt_str,
            "capabilities": F("str_list"),
        },
        status=201,
    ),
    Route("GET", "/v1/identity/agents", "search_agents_by_metrics", search_agents),
    Route("GET", "/v1/identity/agents/{agent_id}", "get_agent_identity", get_identity),
    Route(
        "POST",
        "/v1/identity/agents/{agent_id}/verify",
        "verify_agent",
        verify_agent,
        {"message": F("str", required=True), "signature": F("str", required=True)},
    ),
    Route(
        "GET", "/v1/identity/agents/{agent_id}/reputation", "get_agent_reputation", get_reputation
    ),
    Route("GET", "/v1/identity/agents/{agent_id}/claims", "get_verified_claims", get_claims),
    Route(
        "POST",
        "/v1/identity/agents/{agent_id}/metrics",
        "submit_metrics",
        submit_metrics,
        {"metrics": F("object", required=True), "data_source": _opt_str},
    ),
    Route(
        "POST",
        "/v1/identity/agents/{agent_id}/claim-chains",
        "build_claim_chain",
        build_claim_chain,
    ),
    Route(
        "GET", "/v1/identity/agents/{agent_id}/claim-chains", "get_claim_chains", get_claim_chains
    ),
    Route(
        "POST",
        "/v1/identity/metrics/ingest",
        "ingest_metrics",
        ingest_metrics,
        {
            "agent_id": _agent,
            "metrics": F("object", required=True),
            "data_source": _opt_str,
            "signature": _opt_str,
            "nonce": _opt_str,
        },
    ),
    Route("GET", "/v1/identity/metrics", "query_metrics", query_metrics),
    Route("GET", W + "/balance", "get_balance", get_balance),
    Route(
        "POST",
        W + "/deposit",
        "deposit",
        deposit,
        {"amount": _credits, "currency": _opt_str, "description": _opt_str},
        idempotency="ledger",
    ),
    Route(
        "POST",
        W + "/withdraw",
        "withdraw",
        withdraw,
        {"amount": _credits, "currency": _opt_str, "description": _opt_str},
        idempotency="ledger",
    ),
    Route("POST", W + "/freeze", "freeze_wallet", freeze),
    Route("POST", W + "/unfreeze", "unfreeze_wallet", unfreeze),
    Route("GET", W + "/transactions", "get_transactions", transactions),
    Route("GET", W + "/usage", "get_usage_summary", usage),
    Route(
        "PUT",
        W + "/budget",
        "set_budget_cap",
        set_budget,
        {
            "daily": F("credits"),
            "monthly": F("credits"),
            "alert_threshold": F("number", lo=0, hi=1),
        },
        aliases={"daily_cap": "daily", "monthly_cap": "monthly"},
    ),
    Route("GET", W + "/budget", "get_budget_status", get_budget),
    Route("GET", "/v1/billing/estimate", "estimate_cost", estimate),
    Route("GET", "/v1/billing/discounts", "get_volume_discount", discounts),
    Route("GET", "/v1/billing/exchange-rates", "get_exchange_rate", exchange_rate),
    Route("GET", "/v1/billing/leaderboard", "get_agent_leaderboard", leaderboard),
    Route(
        "POST",
        "/v1/billing/keys",
        "create_api_key",
        create_key,
        {"tier": F("enum", choices=("free", "starter", "pro", "enterprise"))},
        status=201,
    ),
    Route("GET", "/v1/billing/keys", "create_api_key", own_keys),
    Route("GET", "/v1/infra/keys", "list_api_keys", list_keys),
    Route(
        "POST",
        "/v1/infra/keys/rotate",
        "rotate_key",
        rotate_key,
        {"current_key": F("str", required=True)},
    ),
    Route(
        "POST",
        "/v1/payments/intents",
        "create_intent",
        create_intent,
        {
            "payer": _agent,
            "payee": _agent,
            "amount": _credits,
            "description": _opt_str,
            "currency": _opt_str,
            "metadata": F("object"),
            "idempotency_key": _opt_str,
        },
        status=201,
        idempotency="checked",
    ),
    Route("GET", "/v1/payments/intents/{intent_id}", "get_intent", get_intent),
    Route("POST", "/v1/payments/intents/{intent_id}/capture", "capture_intent", capture_intent),
    Route(
        "POST",
        "/v1/payments/escrows",
        "create_escrow",
        create_escrow,
        {
            "payer": _agent,
            "payee": _agent,
            "amount": _credits,
            "description": _opt_str,
            "currency": _opt_str,
            "timeout_hours": F("number", lo=0.001, hi=8760),
            "metadata": F("object"),
        },
        status=201,
    ),
    Route("GET", "/v1/payments/escrows/{escrow_id}", "get_escrow", get_escrow),
    Route("POST", "/v1/payments/escrows/{escrow_id}/cancel", "cancel_escrow", cancel_escrow),
    Route("POST", "/v1/payments/escrows/{escrow_id}/release", "release_escrow", release_escrow),
    Route(
        "POST",
        "/v1/disputes",
        "open_dispute",
        open_dispute,
        {"escrow_id": F("str", required=True), "opener": _agent, "reason": _opt_str},
        status=201,
    ),
    Route("GET", "/v1/disputes", "list_disputes", list_disputes),
    Route("GET", "/v1/disputes/{dispute_id}", "get_dispute", get_dispute),
    Route(
        "POST",
        "/v1/disputes/{dispute_id}/respond",
        "respond_to_dispute",
        respond_dispute,
        {"respondent": _agent, "response": F("str", required=True)},
    ),
    Route(
        "POST",
        "/v1/disputes/{dispute_id}/resolve",
        "resolve_dispute",
        resolve_dispute,
        {
            "resolution": F("enum", required=True, choices=("refund", "release")),
            "resolved_by": F("str", required=True),
            "notes": _opt_str,
        },
    ),
    Route(
        "POST",
        "/v1/marketplace/services",
        "register_service",
        register_service,
        {
            "provider_id": F("str", required=True),
            "name": F("str", required=True),
            "description": F("str", required=True),
            "category": F("str", required=True),
            "tools": F("str_list"),
            "tags": F("str_list"),
            "endpoint": _opt_str,
            "pricing": F("object"),
        },
        status=201,
    ),
    Route("GET", "/v1/marketplace/services", "search_services", search_services),
    Route("GET", "/v1/marketplace/services/{service_id}", "get_service", get_service),
    Route(
        "PUT",
        "/v1/marketplace/services/{service_id}",
        "update_service",
        update_service,
        {
            "name": _opt_str,
            "description": _opt_str,
            "category": _opt_str,
            "tags": F("str_list"),
            "endpoint": _opt_str,
            "metadata": F("object"),
        },
    ),
    Route(
        "POST",
        "/v1/marketplace/services/{service_id}/deactivate",
        "deactivate_service",
        deactivate_service,
    ),
    Route("GET", "/v1/marketplace/match", "best_match", best_match),
    Route(
        "POST",
        "/v1/messaging/messages",
        "send_message",
        send_message,
        {
            "sender": _agent,
            "recipient": _agent,
            "message_type": F("enum", required=True, choices=MESSAGE_TYPES),
            "subject": _opt_str,
            "body": _opt_str,
            "metadata": F("object"),
            "thread_id": _opt_str,
        },
        status=201,
    ),
    Route("GET", "/v1/messaging/messages", "get_messages", get_messages),
    Route(
        "POST",
        "/v1/infra/events",
        "publish_event",
        publish_event,
        {
            "event_type": F("str", required=True, max_len=200),
            "source": F("str", required=True, max_len=200),
            "payload": F("object"),
        },
    ),
    Route("GET", "/v1/infra/events", "get_events", get_events),
    Route(
        "POST",
        "/v1/trust/servers",
        "register_server",
        register_server,
        {
            "name": F("str", required=True),
            "url": F("str", required=True),
            "transport_type": _opt_str,
            "server_id": _opt_str,
        },
        status=201,
    ),
    Route("DELETE", "/v1/trust/servers/{server_id}", "delete_server", delete_server),
)


def required_tier(tool: str) -> str:
    return "pro" if tool in PRO_TOOLS else "free"
