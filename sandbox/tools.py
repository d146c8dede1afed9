"""The 29 gateway tools: validate the input, then read or change the state.

Each tool is ``fn(state, input, caller, now) -> dict``. ``caller`` is ``None``
for the fleet-admin key, else the :class:`Agent` whose own key was presented;
an agent key may act only for its own agent (403 otherwise) and never on
fleet-wide tools. Every tool validates all of its input before it looks
anything up or changes anything, so a 4xx leaves the state as it was.

Choices the spec leaves open (also in the package docstring):

- Overdraft and spending from a frozen wallet are 409 (``insufficient_funds``,
  ``wallet_frozen``): the input is well formed, the state refuses it.
- A frozen wallet may still be drained to a treasury (retirement freezes
  first, then withdraws); any other outgoing move is refused.
- ``transfer_funds.to`` is an agent id, a wallet id, or a treasury id (the
  configured ``--treasury-wallet``, default "fleet-treasury", or any id
  containing "treasury"), created on first use.
- ``create_sla`` on an agent that has one supersedes it; ``register_service``
  on a listed agent updates its listing in place (same service_id).
- ``resolve_dispute`` records the amount; it moves no money.
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

from sandbox.behaviour import DEFAULT_METRICS, METRIC_NAMES, Metrics, reputation_score
from sandbox.state import (
    TIERS,
    Agent,
    Dispute,
    Message,
    SandboxState,
    Service,
    Sla,
    Wallet,
    append_capped,
    episode_view,
    sla_limits,
)
from sandbox.validate import (
    ZERO,
    ToolError,
    bad,
    check_number,
    check_size,
    conflict,
    fmt_money,
    iso,
    not_found,
    opt_bool,
    opt_int,
    opt_money,
    opt_number,
    opt_object,
    opt_str,
    opt_str_list,
    opt_timestamp,
    parse_duration,
    parse_money,
    parse_period,
    req_agent_id,
    req_int,
    req_money,
    req_str,
)

Caller = Agent | None
ToolFn = Callable[[SandboxState, dict[str, Any], Caller, float], dict[str, Any]]

CURRENCY_PER_USD: dict[str, Decimal] = {
    "USD": Decimal("1"),
    "USDC": Decimal("1"),
    "EUR": Decimal("0.92"),
    "GBP": Decimal("0.79"),
    "CHF": Decimal("0.88"),
    "JPY": Decimal("151.20"),
    "CAD": Decimal("1.36"),
    "AUD": Decimal("1.52"),
    "INR": Decimal("83.30"),
    "CNY": Decimal("7.23"),
    "CREDITS": Decimal("100"),
}
# Base price of one call per tool, plus a price per 1,000 units of input.
TOOL_BASE_COST: dict[str, Decimal] = {
    "register_agent": Decimal("0.0050"),
    "build_claim_chain": Decimal("0.0030"),
    "get_compliance_report": Decimal("0.0100"),
    "search_services": Decimal("0.0020"),
    "best_match": Decimal("0.0020"),
    "get_leaderboard": Decimal("0.0020"),
    "search_agents_by_metrics": Decimal("0.0020"),
}
DEFAULT_TOOL_COST = Decimal("0.0010")
COST_PER_1K_INPUT = Decimal("0.0005")
# (monthly call volume, discount %) — the gateway's volume tiers.
VOLUME_DISCOUNTS: tuple[tuple[int, int], ...] = (
    (0, 0),
    (10_000, 5),
    (100_000, 10),
    (1_000_000, 15),
    (10_000_000, 20),
)
ARTICLES: dict[int, str] = {
    9: "Risk management system",
    11: "Technical documentation",
    12: "Record-keeping",
    13: "Transparency and provision of information",
    14: "Human oversight",
    15: "Accuracy, robustness and cybersecurity",
}
PRIORITIES = ("low", "normal", "high", "urgent", "critical")
LEADERBOARD = ("reputation", "latency", "error_rate", "cost", "volume", "completion")
SLA_TERM_NAMES = (
    "p99_latency_ms",
    "uptime_pct",
    "accuracy_pct",
    "max_cost_per_task",
    "max_error_rate",
    "review_days",
)
_PRICE_KEYS = ("per_task", "per_call", "price", "amount", "base_price")
_AI_DISCLOSURE = re.compile(
    r"\bAI\b|artificial intelligence|automated agent|\bbot\b", re.IGNORECASE
)
_ARTICLE_RE = re.compile(r"^(?:art(?:icle)?\.?\s*)?(\d{1,2})$", re.IGNORECASE)
# An episode this old without a frozen wallet is an oversight gap (tier 4 freezes at 30 min).
UNATTENDED_BREACH_S = 1800.0
KEY_ROTATION_S = 90 * 86400.0
Q4 = Decimal("0.0001")
Q6 = Decimal("0.000001")


# --- helpers --------------------------------------------------------------------


def forbidden(message: str) -> ToolError:
    return ToolError(403, "forbidden", message)


def admin_only(caller: Caller, tool: str) -> None:
    if caller is not None:
        raise forbidden(f"{tool} needs the fleet-admin key, not an agent key")


def lookup(
    st: SandboxState,
    agent_id: str,
    caller: Caller,
    field: str = "agent_id",
    *,
    public: bool = False,
) -> Agent:
    """The live agent; an agent key may only name itself (unless the read is public)."""
    if caller is not None and not public and caller.agent_id != agent_id:
        raise forbidden(f"this key belongs to {caller.agent_id!r} and may not act for {agent_id!r}")
    agent = st.agents.get(agent_id)
    if agent is None:
        raise not_found("agent_not_found", f"agent {agent_id!r} is not registered", field)
    return agent


def wallet_of(agent: Agent) -> Any:
    if agent.wallet is None:
        raise not_found("wallet_not_found", f"agent {agent.agent_id!r} has no wallet", "agent_id")
    return agent.wallet


def req_tier(inp: dict[str, Any], name: str, default: str | None = None) -> str:
    tier = opt_str(inp, name, default, 32) if default is not None else req_str(inp, name, 32)
    assert tier is not None
    if tier not in TIERS:
        raise bad(name, f"unknown tier {tier!r} (expected one of {', '.join(TIERS)})")
    return tier


def reputation(agent: Agent, m: Metrics) -> float:
    """Simulated reputation, blended half-and-half with what the agent submitted."""
    score = reputation_score(m.error_rate, m.task_completion_rate, m.latency_p99, m.accuracy_pct)
    submitted = agent.extra.submitted if agent.extra is not None else None
    if submitted:
        direct = submitted.get("reputation", submitted.get("score"))
        if isinstance(direct, int | float) and not isinstance(direct, bool):
            other = min(1.0, max(0.0, float(direct)))
        else:
            other = reputation_score(
                float(submitted.get("error_rate", m.error_rate)),
                float(submitted.get("task_completion_rate", m.task_completion_rate)),
                float(submitted.get("latency_p99", m.latency_p99)),
                float(submitted.get("accuracy_pct", m.accuracy_pct)),
            )
        score = round((score + other) / 2.0, 4)
    return score


def metric_value(name: str, agent: Agent, m: Metrics, window_s: float, now: float) -> Any:
    if name == "latency_p50":
        return round(m.latency_p50, 1)
    if name == "latency_p99":
        return round(m.latency_p99, 1)
    if name == "error_rate":
        return round(m.error_rate, 4)
    if name == "task_completion_rate":
        return round(m.task_completion_rate, 4)
    if name == "tool_call_volume":
        active_s = min(window_s, max(0.0, now - agent.origin))
        return int(m.calls_per_hour * active_s / 3600.0)
    if name == "uptime_pct":
        return round(m.uptime_pct, 3)
    if name == "accuracy_pct":
        return round(m.accuracy_pct, 3)
    if name == "cost_per_task":
        return fmt_money(Decimal(m.cost_per_task).quantize(Q4))
    if name == "tasks_per_hour":
        return round(m.tasks_per_hour, 2)
    return reputation(agent, m)  # "reputation"


def metric_names(inp: dict[str, Any]) -> tuple[str, ...]:
    names = opt_str_list(inp, "metrics", max_items=len(METRIC_NAMES) * 2)
    for i, name in enumerate(names):
        if name not in METRIC_NAMES:
            raise bad(
                f"metrics[{i}]",
                f"unknown metric {name!r} (expected one of {', '.join(METRIC_NAMES)})",
            )
    return tuple(names) or DEFAULT_METRICS


def burn_rate(st: SandboxState, agent: Agent, now: float, m: Metrics | None = None) -> Decimal:
    """Simulated burn (unless frozen) plus what was recorded over the last hour."""
    wallet = agent.wallet
    simulated = ZERO
    if wallet is None or not wallet.frozen:
        m = m or agent.metrics(now)
        simulated = Decimal(f"{m.burn_rate_per_hour:.4f}")
    return simulated + st.recent_spend(agent, now)


# --- identity -------------------------------------------------------------------


def register_agent(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent_id = req_agent_id(inp)
    rotate = opt_bool(inp, "rotate_key")
    upgrade = opt_bool(inp, "upgrade")
    if rotate and upgrade:
        raise bad("upgrade", "cannot be combined with rotate_key")
    if rotate:
        agent = lookup(st, agent_id, caller)
        if agent.old_key:
            st.keys.pop(agent.old_key, None)
        agent.old_key = agent.api_key
        agent.old_key_expires = now + st.key_overlap_s
        agent.api_key = st.new_key(agent.tier)
        agent.key_rotated_at = now
        st.keys[agent.api_key] = agent
        return {
            "agent_id": agent_id,
            "api_key": agent.api_key,
            "tier": agent.tier,
            "registered_at": iso(agent.registered_at),
            "rotated_at": iso(now),
            "previous_key_expires_at": iso(agent.old_key_expires),
        }
    if upgrade:
        tier = req_tier(inp, "tier")
        agent = lookup(st, agent_id, caller)
        previous, agent.tier = agent.tier, tier
        return {
            "agent_id": agent_id,
            "tier": tier,
            "previous_tier": previous,
            "registered_at": iso(agent.registered_at),
            "upgraded_at": iso(now),
        }
    tier = req_tier(inp, "tier", "free")
    capabilities = tuple(opt_str_list(inp, "capabilities"))
    metadata = opt_object(inp, "metadata") or {}
    admin_only(caller, "register_agent (a new identity)")
    if agent_id in st.agents:
        raise conflict("agent_exists", f"agent {agent_id!r} is already registered")
    agent = st.register(agent_id, tier, capabilities, metadata, now)
    return {
        "agent_id": agent_id,
        "api_key": agent.api_key,
        "tier": tier,
        "registered_at": iso(now),
        "status": agent.status,
    }


def build_claim_chain(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent_id = req_agent_id(inp)
    claims = inp.get("claims")
    if claims is None:
        raise bad("claims", "required")
    if not isinstance(claims, list) or not claims:
        raise bad("claims", "must be a non-empty list of strings or objects")
    if len(claims) > 100:
        raise bad("claims", "must have at most 100 items")
    for i, claim in enumerate(claims):
        if not (isinstance(claim, str) and claim.strip()) and not isinstance(claim, dict):
            raise bad(f"claims[{i}]", "must be a non-empty string or an object")
    check_size("claims", claims)
    agent = lookup(st, agent_id, caller)
    # Each link hashes the previous hash with the canonical claim: altering
    # any claim changes every hash after it.
    previous = "0" * 64
    links = []
    for i, claim in enumerate(claims):
        digest = hashlib.sha256(
            previous.encode() + orjson.dumps(claim, option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        links.append({"index": i, "claim": claim, "hash": digest, "previous_hash": previous})
        previous = digest
    chain_id = st.new_id("chn")
    append_capped(
        agent.more().chains,
        {"chain_id": chain_id, "root_hash": previous, "claims": len(links), "built_at": iso(now)},
    )
    st.chains_total += 1
    return {"chain_id": chain_id, "agent_id": agent_id, "claims": links, "root_hash": previous}


def deregister_agent(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent_id = req_agent_id(inp)
    reason = opt_str(inp, "reason", "", 1000) or ""
    agent = lookup(st, agent_id, caller)
    st.deregister(agent, reason, now)
    out: dict[str, Any] = {
        "agent_id": agent_id,
        "status": agent.status,
        "deregistered_at": iso(now),
    }
    if agent.wallet is not None:
        out["wallet_balance"] = fmt_money(agent.wallet.balance)
        out["wallet_frozen"] = agent.wallet.frozen
    return out


# --- billing and payments ---------------------------------------------------------


def create_wallet(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent_id = req_agent_id(inp)
    balance = opt_money(inp, "initial_balance", ZERO)
    assert balance is not None
    agent = lookup(st, agent_id, caller)
    if agent.wallet is not None:
        raise conflict(
            "wallet_exists", f"agent {agent_id!r} already has wallet {agent.wallet.wallet_id}"
        )
    wallet = Wallet(st.new_id("wal"), agent, balance, now)
    st.wallets[wallet.wallet_id] = wallet
    agent.wallet = wallet
    return {
        "wallet_id": wallet.wallet_id,
        "agent_id": agent_id,
        "balance": fmt_money(balance),
        "currency": "USD",
    }


def get_balance(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent = lookup(st, req_agent_id(inp), caller)
    wallet = wallet_of(agent)
    st.settle(wallet, now)
    return {
        "agent_id": agent.agent_id,
        "wallet_id": wallet.wallet_id,
        "balance": fmt_money(wallet.balance),
        "burn_rate_per_hour": fmt_money(burn_rate(st, agent, now).quantize(Q4)),
        "frozen": wallet.frozen,
        "currency": "USD",
    }


def estimate_cost(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    if inp.get("tool_name") is not None or inp.get("agent_id") is None:
        tool_name = req_str(inp, "tool_name", 128)
        size = req_int(inp, "input_size", 0, 10**12)
        cost = TOOL_BASE_COST.get(tool_name, DEFAULT_TOOL_COST) + COST_PER_1K_INPUT * size / 1000
        return {
            "tool_name": tool_name,
            "input_size": size,
            "estimated_cost": fmt_money(cost.quantize(Q6)),
        }
    agent_id = req_agent_id(inp)
    new_tier = req_tier(inp, "new_tier")
    volume = req_int(inp, "projected_volume", 0, 10**12)
    agent = lookup(st, agent_id, caller)
    current_volume = int(agent.metrics(now).calls_per_hour * 24)
    fee, per_call = TIERS[agent.tier]
    new_fee, new_per_call = TIERS[new_tier]
    current = (fee + per_call * current_volume).quantize(Q4)
    projected = (new_fee + new_per_call * volume).quantize(Q4)
    change = round(float((projected - current) / current * 100), 2) if current > 0 else None
    return {
        "agent_id": agent_id,
        "current_tier": agent.tier,
        "new_tier": new_tier,
        "current_daily_volume": current_volume,
        "projected_volume": volume,
        "current_daily_cost": fmt_money(current),
        "projected_daily_cost": fmt_money(projected),
        "change_pct": change,
    }


def get_volume_discount(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent = lookup(st, req_agent_id(inp), caller)
    age_h = min(720.0, max(0.0, now - agent.origin) / 3600.0)
    recorded = agent.extra.transaction_count if agent.extra is not None else 0
    volume = int(agent.metrics(now).calls_per_hour * age_h) + recorded
    discount, next_volume = 0, None
    for threshold, pct in VOLUME_DISCOUNTS:
        if volume >= threshold:
            discount = pct
        else:
            next_volume = threshold
            break
    return {
        "agent_id": agent.agent_id,
        "discount_pct": discount,
        "volume": volume,
        "next_tier_volume": next_volume,
    }


def convert_currency(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    amount = req_money(inp, "amount")
    codes = []
    for name in ("from_currency", "to_currency"):
        code = req_str(inp, name, 16).strip().upper()
        if code not in CURRENCY_PER_USD:
            raise bad(
                name, f"unknown currency {code!r} (expected one of {', '.join(CURRENCY_PER_USD)})"
            )
        codes.append(code)
    rate = (CURRENCY_PER_USD[codes[1]] / CURRENCY_PER_USD[codes[0]]).quantize(Q6)
    converted = (amount * CURRENCY_PER_USD[codes[1]] / CURRENCY_PER_USD[codes[0]]).quantize(Q4)
    return {
        "amount": fmt_money(converted),
        "rate": fmt_money(rate),
        "from_currency": codes[0],
        "to_currency": codes[1],
        "original_amount": fmt_money(amount),
    }


def record_transaction(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent_id = req_agent_id(inp)
    task_id = req_str(inp, "task_id", 256)
    tool = req_str(inp, "tool", 128)
    cost = req_money(inp, "cost")
    opt_timestamp(inp, "timestamp")  # validated; the sandbox clock orders the ledger
    agent = lookup(st, agent_id, caller)
    wallet = wallet_of(agent)
    if wallet.frozen:
        raise conflict("wallet_frozen", f"wallet {wallet.wallet_id} of {agent_id!r} is frozen")
    st.settle(wallet, now)
    if cost > wallet.balance:
        raise conflict(
            "insufficient_funds",
            f"cost {fmt_money(cost)} exceeds the balance {fmt_money(wallet.balance)} of {agent_id!r}",
        )
    wallet.balance -= cost
    txn = st.record(agent, "spend", cost, now, f"{task_id} {tool}")
    return {"transaction_id": txn, "agent_id": agent_id, "balance": fmt_money(wallet.balance)}


def transfer_funds(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    from_id = req_agent_id(inp, "from_agent_id")
    to = req_str(inp, "to", 128)
    raw_amount = inp.get("amount")
    if raw_amount is None:
        raise bad("amount", "required")
    drain = raw_amount == "all"
    amount = ZERO if drain else parse_money("amount", raw_amount)
    if not drain and amount <= 0:
        raise bad("amount", 'must be greater than zero (or "all")')
    agent = lookup(st, from_id, caller, "from_agent_id")
    source = wallet_of(agent)
    if to in (from_id, source.wallet_id):
        raise bad("to", "must differ from the source wallet")
    target = None
    to_agent = st.agents.get(to)
    if to_agent is not None:
        target = to_agent.wallet
        if target is None:
            raise not_found("wallet_not_found", f"agent {to!r} has no wallet", "to")
    else:
        target = st.wallets.get(to)
        if (
            target is not None
            and not target.treasury
            and (target.owner is None or not target.owner.live)
        ):
            target = None
        if target is None and (to == st.treasury_wallet or "treasury" in to.lower()):
            target = st.treasury(to, now)
    if target is None:
        raise not_found("wallet_not_found", f"no live wallet, agent or treasury named {to!r}", "to")
    if source.frozen and not target.treasury:
        raise conflict(
            "wallet_frozen",
            f"wallet {source.wallet_id} is frozen; it may only be drained to a treasury",
        )
    st.settle(source, now)
    st.settle(target, now)
    if drain:
        amount = source.balance
    if amount > source.balance:
        raise conflict(
            "insufficient_funds",
            f"amount {fmt_money(amount)} exceeds the balance {fmt_money(source.balance)} of {from_id!r}",
        )
    source.balance -= amount
    target.balance += amount
    txn = st.record(agent, "transfer_out", amount, now, f"to {target.wallet_id}")
    if target.owner is not None:
        st.record(target.owner, "transfer_in", amount, now, f"from {source.wallet_id}")
    return {
        "transaction_id": txn,
        "amount": fmt_money(amount),
        "from_wallet_id": source.wallet_id,
        "to_wallet_id": target.wallet_id,
        "balance": fmt_money(source.balance),
    }


def freeze_wallet(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent_id = req_agent_id(inp)
    reason = opt_str(inp, "reason", "", 1000) or ""
    agent = lookup(st, agent_id, caller)
    wallet = wallet_of(agent)
    # Charge what was spent up to now; nothing accrues while frozen.
    st.settle(wallet, now)
    wallet.frozen = True
    wallet.frozen_reason = reason
    return {
        "wallet_id": wallet.wallet_id,
        "agent_id": agent_id,
        "frozen": True,
        "balance": fmt_money(wallet.balance),
    }


def unfreeze_wallet(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent_id = req_agent_id(inp)
    opt_str(inp, "reason", "", 1000)
    # Lifting a freeze is the human's decision, not the agent's.
    admin_only(caller, "unfreeze_wallet")
    agent = lookup(st, agent_id, caller)
    wallet = wallet_of(agent)
    st.settle(wallet, now)
    wallet.frozen = False
    wallet.frozen_reason = ""
    return {
        "wallet_id": wallet.wallet_id,
        "agent_id": agent_id,
        "frozen": False,
        "balance": fmt_money(wallet.balance),
    }


# --- trust ----------------------------------------------------------------------


def submit_metrics(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent_id = req_agent_id(inp)
    metrics = opt_object(inp, "metrics", required=True)
    assert metrics is not None
    if len(metrics) > 64:
        raise bad("metrics", "must have at most 64 entries")
    for name, value in metrics.items():
        if len(name) > 64:
            raise bad("metrics", f"metric names must be at most 64 characters ({name[:20]!r}...)")
        check_number(f"metrics.{name}", value)
    agent = lookup(st, agent_id, caller)
    agent.more().submitted.update(metrics)
    return {"accepted": True, "agent_id": agent_id, "metrics": len(metrics)}


def get_agent_reputation(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent = lookup(st, req_agent_id(inp), caller, public=True)
    return {"agent_id": agent.agent_id, "score": reputation(agent, agent.metrics(now))}


def get_analytics(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent_id = req_agent_id(inp)
    time_range = inp.get("time_range", "1h")
    window_s = parse_duration("time_range", time_range)
    names = metric_names(inp)
    agent = lookup(st, agent_id, caller)
    m = agent.metrics(now)
    out: dict[str, Any] = {"agent_id": agent_id, "time_range": time_range}
    for name in names:
        out[name] = metric_value(name, agent, m, window_s, now)
    return out


def search_agents_by_metrics(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    prefix = opt_str(inp, "prefix", "", 128) or ""
    names = metric_names(inp)
    limit = opt_int(inp, "limit", 100, 1, 1000)
    offset = opt_int(inp, "offset", 0, 0)
    assert limit is not None and offset is not None
    agents = []
    total = 0
    for agent in st.iter_prefix(prefix):
        if offset <= total < offset + limit:
            m = agent.metrics(now)
            row: dict[str, Any] = {"agent_id": agent.agent_id}
            for name in names:
                row[name] = metric_value(name, agent, m, 3600.0, now)
            agents.append(row)
        total += 1
    next_offset = offset + limit if offset + limit < total else None
    return {"agents": agents, "total": total, "next_offset": next_offset}


def get_leaderboard(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    category = opt_str(inp, "category", "reputation", 32) or "reputation"
    if category not in LEADERBOARD:
        raise bad(
            "category", f"unknown category {category!r} (expected one of {', '.join(LEADERBOARD)})"
        )
    fleet = opt_str(inp, "fleet", "", 128) or ""
    limit = opt_int(inp, "limit", 10, 1, 100)
    assert limit is not None
    lower_is_better = category in ("latency", "error_rate", "cost")
    rows: list[tuple[float, str]] = []
    for agent in st.iter_prefix(fleet):
        m = agent.metrics(now)
        if lower_is_better and m.task_completion_rate == 0:
            continue  # a dead agent is not the cheapest or the fastest
        if category == "reputation":
            value = reputation(agent, m)
        elif category == "latency":
            value = round(m.latency_p99, 1)
        elif category == "error_rate":
            value = round(m.error_rate, 4)
        elif category == "cost":
            value = round(m.cost_per_task, 4)
        elif category == "volume":
            value = round(m.calls_per_hour, 1)
        else:
            value = round(m.task_completion_rate, 4)
        rows.append((value, agent.agent_id))
    best = (heapq.nsmallest if lower_is_better else heapq.nlargest)(limit, rows, key=lambda r: r[0])
    entries = [
        {"rank": i + 1, "agent_id": agent_id, "value": value}
        for i, (value, agent_id) in enumerate(best)
    ]
    return {"category": category, "fleet": fleet, "entries": entries, "total": len(rows)}


# --- SLA ------------------------------------------------------------------------


def _sla_terms(st: SandboxState, inp: dict[str, Any]) -> dict[str, Any]:
    template = opt_str(inp, "template", None, 64)
    terms: dict[str, Any] = {}
    if template is not None:
        if template not in st.sla_templates:
            raise bad(
                "template",
                f"unknown SLA template {template!r} (expected one of {', '.join(st.sla_templates)})",
            )
        terms.update(st.sla_templates[template])
    given = opt_object(inp, "terms", required=template is None)
    for name, value in (given or {}).items():
        field = f"terms.{name}"
        if name == "p99_latency_ms":
            terms[name] = check_number(field, value, 0.001)
        elif name in ("uptime_pct", "accuracy_pct"):
            number = check_number(field, value, 0.0, 100.0)
            if number <= 0:
                raise bad(field, "must be greater than 0")
            terms[name] = number
        elif name == "max_cost_per_task":
            terms[name] = fmt_money(parse_money(field, value))
        elif name == "max_error_rate":
            terms[name] = check_number(field, value, 0.0, 1.0)
        elif name == "review_days":
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise bad(field, "must be a positive integer")
            terms[name] = value
        else:
            raise bad(field, f"unknown term (expected some of {', '.join(SLA_TERM_NAMES)})")
    if not sla_limits(terms):
        raise bad("terms", f"must set at least one of {', '.join(SLA_TERM_NAMES[:5])}")
    return terms


def create_sla(st: SandboxState, inp: dict[str, Any], caller: Caller, now: float) -> dict[str, Any]:
    agent_id = req_agent_id(inp)
    terms = _sla_terms(st, inp)
    agent = lookup(st, agent_id, caller)
    out: dict[str, Any] = {}
    if agent.sla is not None:
        out["superseded"] = agent.sla.sla_id
        st.end_sla(agent.sla, now)
    sla = Sla(st.new_id("sla"), agent, terms, sla_limits(terms), now)
    agent.sla = sla
    st.slas_total += 1
    return {
        "sla_id": sla.sla_id,
        "agent_id": agent_id,
        "terms": terms,
        "created_at": iso(now),
        **out,
    }


def _sla_of(agent: Agent) -> Sla:
    if agent.sla is None:
        raise not_found("sla_not_found", f"agent {agent.agent_id!r} has no SLA", "agent_id")
    return agent.sla


def check_sla_compliance(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent = lookup(st, req_agent_id(inp), caller)
    sla = _sla_of(agent)
    breached, margin, _ = st.evaluate(sla, now)
    out: dict[str, Any] = {
        "agent_id": agent.agent_id,
        "sla_id": sla.sla_id,
        "compliant": not breached,
        "margin_pct": round(margin * 100.0, 2),
        "breached_terms": breached,
        "checked_at": iso(now),
    }
    if sla.episode_start is not None:
        out["in_violation_since"] = iso(sla.episode_start)
    return out


def get_sla_violations(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    limit = opt_int(inp, "limit", 500, 1, 5000)
    assert limit is not None
    if inp.get("agent_id") is not None or inp.get("fleet_prefix") is None:
        agent_id = req_agent_id(inp)
        window = (
            parse_period("period", inp["period"], now) if inp.get("period") is not None else None
        )
        agent = lookup(st, agent_id, caller)
        if agent.sla is not None:
            st.evaluate(agent.sla, now)
        views, minutes = _episodes_in(st, agent, now, window)
        return {
            "agent_id": agent_id,
            "violations": views[-limit:],
            "count": len(views),
            "duration_minutes": minutes,
        }
    prefix = req_str(inp, "fleet_prefix", 128, allow_empty=True)
    start, end = parse_period("period", inp.get("period", "30d"), now)
    admin_only(caller, "get_sla_violations for a fleet")
    views: list[dict[str, Any]] = []
    total_minutes = 0.0
    agents_in_violation = 0
    for agent in st.iter_prefix(prefix):
        if agent.sla is not None:
            st.evaluate(agent.sla, now)
        if agent.extra is None and (agent.sla is None or agent.sla.episode_start is None):
            continue
        found, minutes = _episodes_in(st, agent, now, (start, end))
        if found:
            agents_in_violation += 1
            total_minutes += minutes
            for view in found:
                view["agent_id"] = agent.agent_id
            views.extend(found)
    views.sort(key=lambda v: v["started_at"])
    return {
        "fleet_prefix": prefix,
        "period": inp.get("period", "30d"),
        "violations": views[-limit:],
        "count": len(views),
        "agents_in_violation": agents_in_violation,
        "duration_minutes": round(total_minutes, 2),
    }


def _episodes_in(
    st: SandboxState, agent: Agent, now: float, window: tuple[float, float] | None
) -> tuple[list[dict[str, Any]], float]:
    """Episode views overlapping the window; minutes are clipped to it."""
    views = []
    minutes = 0.0
    for episode in st.episodes(agent, now):
        start, end = episode[1], episode[2] if episode[2] is not None else now
        if window is not None:
            if end < window[0] or start > window[1]:
                continue
            start, end = max(start, window[0]), min(end, window[1])
        minutes += max(0.0, end - start) / 60.0
        views.append(episode_view(episode, now))
    return views, round(minutes, 2)


# --- messaging, disputes -----------------------------------------------------------


def send_message(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    to = req_str(inp, "to", 256)
    subject = req_str(inp, "subject", 512)
    body = req_str(inp, "body", 8000)
    priority = opt_str(inp, "priority", "normal", 16) or "normal"
    if priority not in PRIORITIES:
        raise bad("priority", f"must be one of {', '.join(PRIORITIES)}")
    requires_response = opt_bool(inp, "requires_response")
    sender = opt_str(inp, "from", None, 128) if caller is None else caller.agent_id
    message = Message(
        st.new_id("msg"),
        sender or "fleet-admin",
        to,
        subject,
        body,
        priority,
        requires_response,
        now,
    )
    st.messages.append(message)
    st.messages_total += 1
    if caller is not None:
        caller.more().messages_sent += 1
    return {"message_id": message.message_id, "sent_at": iso(now), "to": to}


def create_dispute(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent_id = req_agent_id(inp)
    counterparty = req_str(inp, "counterparty", 128)
    reason = req_str(inp, "reason", 1000)
    details = inp.get("details")
    if details is not None:
        if not isinstance(details, str | dict):
            raise bad("details", "must be a string or an object")
        check_size("details", details)
    agent = lookup(st, agent_id, caller)
    dispute = Dispute(st.new_id("dsp"), agent_id, counterparty, reason, details, now)
    st.disputes[dispute.dispute_id] = dispute
    append_capped(agent.more().disputes, dispute.dispute_id)
    return {
        "dispute_id": dispute.dispute_id,
        "status": dispute.status,
        "agent_id": agent_id,
        "counterparty": counterparty,
    }


def resolve_dispute(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    dispute_id = req_str(inp, "dispute_id", 64)
    resolution = req_str(inp, "resolution", 256)
    amount = opt_money(inp, "amount", ZERO)
    assert amount is not None
    notes = opt_str(inp, "notes", "", 4000) or ""
    dispute = st.disputes.get(dispute_id)
    if dispute is None:
        raise not_found("dispute_not_found", f"dispute {dispute_id!r} does not exist", "dispute_id")
    if caller is not None and caller.agent_id not in (dispute.agent_id, dispute.counterparty):
        raise forbidden(f"this key is not a party to dispute {dispute_id!r}")
    if dispute.status != "open":
        raise conflict("dispute_resolved", f"dispute {dispute_id!r} was already resolved")
    dispute.status = "resolved"
    dispute.resolution = resolution
    dispute.amount = amount
    dispute.notes = notes
    dispute.resolved_at = now
    return {
        "dispute_id": dispute_id,
        "status": dispute.status,
        "resolution": resolution,
        "amount": fmt_money(amount),
    }


# --- marketplace -----------------------------------------------------------------


def register_service(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent_id = req_agent_id(inp)
    capabilities = tuple(opt_str_list(inp, "capabilities"))
    pricing = opt_object(inp, "pricing") or {}
    price = ZERO
    for key in _PRICE_KEYS:
        if key in pricing:
            price = parse_money(f"pricing.{key}", pricing[key])
            break
    agent = lookup(st, agent_id, caller)
    capabilities = capabilities or agent.capabilities
    service = agent.service
    updated = service is not None
    if service is None:
        service = agent.service = Service(
            st.new_id("svc"), agent, capabilities, pricing, price, now
        )
    else:
        service.capabilities, service.pricing, service.price = capabilities, pricing, price
    return {
        "service_id": service.service_id,
        "agent_id": agent_id,
        "price": fmt_money(price),
        "updated": updated,
    }


def _market_filters(
    inp: dict[str, Any],
) -> tuple[frozenset[str], float, Decimal | None, float | None]:
    capabilities = frozenset(opt_str_list(inp, "capabilities"))
    min_rep = opt_number(inp, "min_reputation", 0.0, 0.0, 1.0)
    max_cost = opt_money(inp, "max_cost")
    max_latency = opt_number(inp, "max_latency_ms", None, 0.0)
    assert min_rep is not None
    return capabilities, min_rep, max_cost, max_latency


def _matches(
    agent: Agent,
    caps: tuple[str, ...],
    price: Decimal,
    filters: tuple[frozenset[str], float, Decimal | None, float | None],
    now: float,
) -> tuple[float, Metrics] | None:
    """(reputation, metrics) if the agent meets every filter, else None."""
    wanted, min_rep, max_cost, max_latency = filters
    if wanted and not wanted.issubset(caps):
        return None
    if max_cost is not None and price > max_cost:
        return None
    m = agent.metrics(now)
    if max_latency is not None and m.latency_p50 > max_latency:
        return None
    rep = reputation(agent, m)
    if rep < min_rep:
        return None
    return rep, m


def search_services(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    filters = _market_filters(inp)
    limit = opt_int(inp, "limit", 20, 1, 200)
    assert limit is not None
    found: list[tuple[float, Decimal, str, Service, Metrics]] = []
    for agent in st.agents.values():
        service = agent.service
        if service is None:
            continue
        hit = _matches(agent, service.capabilities, service.price, filters, now)
        if hit is not None:
            found.append((hit[0], service.price, agent.agent_id, service, hit[1]))
    best = heapq.nsmallest(limit, found, key=lambda r: (-r[0], r[1], r[2]))
    services = [
        {
            "service_id": service.service_id,
            "agent_id": agent_id,
            "capabilities": list(service.capabilities),
            "price": fmt_money(price),
            "reputation": rep,
            "latency_ms": round(m.latency_p50, 1),
            "latency_p99_ms": round(m.latency_p99, 1),
        }
        for rep, price, agent_id, service, m in best
    ]
    return {"services": services, "total": len(found)}


def best_match(st: SandboxState, inp: dict[str, Any], caller: Caller, now: float) -> dict[str, Any]:
    requirements = opt_object(inp, "requirements") or {}
    try:
        filters = _market_filters(requirements)
    except ToolError as exc:
        raise bad(f"requirements.{exc.field}", exc.message.split(": ", 1)[-1]) from None
    candidates = (
        opt_str_list(inp, "candidates", max_items=1000)
        if inp.get("candidates") is not None
        else None
    )
    pool: list[Agent]
    if candidates is not None:
        pool = [st.agents[c] for c in candidates if c in st.agents]
    else:
        pool = [a for a in st.agents.values() if a.service is not None]
    best: tuple[float, Decimal, str] | None = None
    for agent in pool:
        service = agent.service
        caps = service.capabilities if service is not None else agent.capabilities
        price = service.price if service is not None else ZERO
        hit = _matches(agent, caps, price, filters, now)
        # Highest reputation wins; the cheaper of equals, then the first seen.
        if hit is not None and (best is None or (hit[0], -price) > (best[0], -best[1])):
            best = (hit[0], price, agent.agent_id)
    if best is None:
        return {"best_match": None, "score": None, "considered": len(pool)}
    return {
        "best_match": best[2],
        "score": best[0],
        "price": fmt_money(best[1]),
        "considered": len(pool),
    }


# --- compliance, platform ------------------------------------------------------------


def create_audit_trail(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    agent_id = req_agent_id(inp)
    action = req_str(inp, "action", 128)
    details = inp.get("details")
    if details is not None:
        if not isinstance(details, str | dict):
            raise bad("details", "must be an object or a string")
        check_size("details", details)
    metadata = opt_object(inp, "metadata") or {}
    agent = lookup(st, agent_id, caller)
    audit_id = st.new_id("aud")
    extra = agent.more()
    append_capped(
        extra.audits,
        (
            now,
            {
                "audit_id": audit_id,
                "action": action,
                "details": details,
                "metadata": metadata,
                "recorded_at": iso(now),
            },
        ),
    )
    extra.audit_count += 1
    st.audits_total += 1
    return {"audit_id": audit_id, "agent_id": agent_id, "recorded_at": iso(now)}


def _article(value: Any, i: int) -> int:
    text = (
        str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    )
    match = _ARTICLE_RE.match(text)
    if not match or int(match.group(1)) not in ARTICLES:
        raise bad(f"articles[{i}]", f"must be one of the articles {', '.join(map(str, ARTICLES))}")
    return int(match.group(1))


def get_compliance_report(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    prefix = req_str(inp, "fleet_prefix", 128, allow_empty=True)
    period = inp.get("period", "30d")
    start, end = parse_period("period", period, now)
    raw_articles = inp.get("articles")
    if raw_articles is not None and not isinstance(raw_articles, list):
        raise bad("articles", "must be a list of article numbers")
    articles = sorted({_article(a, i) for i, a in enumerate(raw_articles or [])}) or list(ARTICLES)
    admin_only(caller, "get_compliance_report")

    agents = list(st.iter_prefix(prefix))
    ids = {a.agent_id for a in agents}
    no_sla = [a.agent_id for a in agents if a.sla is None]
    undocumented = [a.agent_id for a in agents if not a.capabilities or not a.metadata]
    audits_in_period = 0
    unaudited: list[str] = []
    for agent in agents:
        count = 0
        if agent.extra is not None:
            count = sum(1 for t, _ in agent.extra.audits if start <= t < end)
        audits_in_period += count
        if count == 0:
            unaudited.append(agent.agent_id)
    sent = [
        m
        for m in st.messages
        if start <= m.sent_at < end
        and (m.sender in ids or (m.sender == "fleet-admin" and m.to in ids))
    ]
    undisclosed = [
        m.message_id for m in sent if not _AI_DISCLOSURE.search(m.subject + " " + m.body)
    ]
    breaching: list[str] = []
    unattended: list[str] = []
    stale_keys: list[str] = []
    violation_minutes = 0.0
    for agent in agents:
        if agent.sla is not None:
            breached, _, _ = st.evaluate(agent.sla, now)
            if breached:
                breaching.append(agent.agent_id)
            started = agent.sla.episode_start
            if (
                started is not None
                and now - started > UNATTENDED_BREACH_S
                and not (agent.wallet and agent.wallet.frozen)
            ):
                unattended.append(agent.agent_id)
        if agent.extra is not None or (
            agent.sla is not None and agent.sla.episode_start is not None
        ):
            violation_minutes += _episodes_in(st, agent, now, (start, end))[1]
        if now - agent.key_rotated_at > KEY_ROTATION_S:
            stale_keys.append(agent.agent_id)
    frozen = sum(1 for a in agents if a.wallet is not None and a.wallet.frozen)
    disputes_resolved = sum(
        1
        for d in st.disputes.values()
        if d.agent_id in ids and d.status == "resolved" and start <= d.resolved_at < end
    )

    def finding(what: str, ids_: list[str]) -> dict[str, Any]:
        return {"finding": what, "count": len(ids_), "examples": ids_[:10]}

    findings: dict[int, list[dict[str, Any]]] = {
        9: [finding("agents without an SLA (no defined risk controls)", no_sla)] if no_sla else [],
        11: [finding("agents without declared capabilities or metadata", undocumented)]
        if undocumented
        else [],
        12: [finding("agents without an audit entry in the period", unaudited)]
        if unaudited
        else [],
        13: [finding("messages without an AI disclosure", undisclosed)] if undisclosed else [],
        14: [finding("breaches open over 30 minutes with the wallet not frozen", unattended)]
        if unattended
        else [],
        15: [
            f
            for f in (
                finding("agents currently breaching their SLA", breaching) if breaching else None,
                finding("API keys older than 90 days", stale_keys) if stale_keys else None,
            )
            if f is not None
        ],
    }
    evidence: dict[int, dict[str, Any]] = {
        9: {"agents": len(agents), "with_sla": len(agents) - len(no_sla)},
        11: {"agents": len(agents), "documented": len(agents) - len(undocumented)},
        12: {"audit_entries": audits_in_period, "agents_audited": len(agents) - len(unaudited)},
        13: {"messages": len(sent), "disclosed": len(sent) - len(undisclosed)},
        14: {"frozen_wallets": frozen, "disputes_resolved": disputes_resolved},
        15: {"breaching": len(breaching), "violation_minutes": round(violation_minutes, 2)},
    }
    report = {
        str(n): {
            "article": n,
            "title": ARTICLES[n],
            "status": "compliant" if not findings[n] else "findings",
            "findings": findings[n],
            "evidence": evidence[n],
        }
        for n in articles
    }
    return {
        "fleet_prefix": prefix,
        "period": period,
        "period_start": iso(start),
        "period_end": iso(end),
        "generated_at": iso(now),
        "agents": len(agents),
        "compliant": all(not findings[n] for n in articles),
        "articles": report,
    }


def check_rate_limit(
    st: SandboxState, inp: dict[str, Any], caller: Caller, now: float
) -> dict[str, Any]:
    fleet = req_str(inp, "fleet", 128)
    # One tenant: the window counts every tool call the sandbox has answered.
    window = st.rate_window_s
    start, used = st.rate_window_start, st.rate_window_count
    if now >= start + window:
        start, used = now - now % window, 0
    return {
        "fleet": fleet,
        "limit": st.rate_limit,
        "remaining": max(0, st.rate_limit - used),
        "reset_at": iso(start + window),
        "window_s": window,
    }


TOOLS: dict[str, ToolFn] = {
    fn.__name__: fn
    for fn in (
        register_agent,
        build_claim_chain,
        create_wallet,
        get_balance,
        estimate_cost,
        get_volume_discount,
        convert_currency,
        record_transaction,
        submit_metrics,
        get_agent_reputation,
        get_analytics,
        search_agents_by_metrics,
        get_leaderboard,
        create_sla,
        check_sla_compliance,
        get_sla_violations,
        send_message,
        create_dispute,
        resolve_dispute,
        register_service,
        search_services,
        best_match,
        create_audit_trail,
        get_compliance_report,
        check_rate_limit,
        freeze_wallet,
        unfreeze_wallet,
        transfer_funds,
        deregister_agent,
    )
}

# The input field that names the agent a call is about (for per-agent counters).
SUBJECT_FIELDS = ("agent_id", "from_agent_id")
