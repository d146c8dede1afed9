"""The same request sequence against two gateways, reduced to what must match.

Each step is reduced to (status, the rate/charge/location headers present, the
answer's top-level keys, the problem type), so two runs with different ids and
keys compare equal when the behaviour is the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx

WATCHED = (
    "x-charged",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "location",
    "deprecation",
    "sunset",
)
Step = tuple[str, int, tuple[str, ...], tuple[str, ...], str]


def run_sequence(base_url: str, admin_key: str, mint: Callable[[str, str], str]) -> list[Step]:
    """Run the sequence; ``mint(agent_id, tier)`` gives a key of that tier for an agent."""
    with httpx.Client(base_url=base_url, timeout=15) as http:
        return _run(http, admin_key, mint)


def _run(http: httpx.Client, admin_key: str, mint: Callable[[str, str], str]) -> list[Step]:
    steps: list[Step] = []

    def call(
        label: str, method: str, path: str, key: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        try:
            r = http.request(method, path, headers=headers, **kw)
        except httpx.TransportError:  # a connection the server closed after an error
            r = http.request(method, path, headers=headers, **kw)
        try:
            body = r.json()
        except ValueError:
            body = None
        keys = tuple(sorted(body)) if isinstance(body, dict) else ()
        ptype = str(body.get("type", "")) if isinstance(body, dict) else ""
        present = tuple(h for h in WATCHED if h in r.headers)
        steps.append((label, r.status_code, present, keys, ptype.rsplit("/", 1)[-1]))
        return r

    run = uuid.uuid4().hex[:6]
    a, b = f"t-sbxdiff-{run}-a", f"t-sbxdiff-{run}-b"
    ka = call("register", "POST", "/v1/register", json={"agent_id": a}).json()["api_key"]
    kb = call("register b", "POST", "/v1/register", json={"agent_id": b}).json()["api_key"]
    call("register again", "POST", "/v1/register", json={"agent_id": a})
    call("register extra", "POST", "/v1/register", json={"agent_id": "x" + a, "tier": "pro"})
    call("health", "GET", "/v1/health")
    call("execute 410", "POST", "/v1/execute", json={"tool": "get_balance", "input": {}})
    call("balance no key", "GET", f"/v1/billing/wallets/{a}/balance")
    call("balance own", "GET", f"/v1/billing/wallets/{a}/balance", ka)
    call("balance admin", "GET", f"/v1/billing/wallets/{a}/balance", admin_key)
    call("balance other 403", "GET", f"/v1/billing/wallets/{b}/balance", ka)
    dep = {"amount": "10.00", "description": "top-up"}
    idem = {"Idempotency-Key": f"dep-{run}"}
    call("deposit", "POST", f"/v1/billing/wallets/{a}/deposit", ka, json=dep, headers=idem)
    call("deposit replay", "POST", f"/v1/billing/wallets/{a}/deposit", ka, json=dep, headers=idem)
    call(
        "deposit reuse 409",
        "POST",
        f"/v1/billing/wallets/{a}/deposit",
        ka,
        json={"amount": "11.00"},
        headers=idem,
    )
    call(
        "deposit over cap",
        "POST",
        f"/v1/billing/wallets/{a}/deposit",
        ka,
        json={"amount": "1000.01"},
    )
    call(
        "deposit extra 422",
        "POST",
        f"/v1/billing/wallets/{a}/deposit",
        ka,
        json={"amount": "1.00", "x": 1},
    )
    call(
        "deposit 3dp 422", "POST", f"/v1/billing/wallets/{a}/deposit", ka, json={"amount": "1.555"}
    )
    call("withdraw", "POST", f"/v1/billing/wallets/{a}/withdraw", ka, json={"amount": "1.00"})
    call(
        "withdraw too much",
        "POST",
        f"/v1/billing/wallets/{a}/withdraw",
        ka,
        json={"amount": "99999.00"},
    )
    call(
        "budget set",
        "PUT",
        f"/v1/billing/wallets/{a}/budget",
        ka,
        json={"daily_cap": "5.00", "monthly_cap": "100.00", "alert_threshold": 0.8},
    )
    call("budget get", "GET", f"/v1/billing/wallets/{a}/budget", ka)
    call("usage", "GET", f"/v1/billing/wallets/{a}/usage", ka)
    call("transactions", "GET", f"/v1/billing/wallets/{a}/transactions", ka, params={"limit": 2})
    call("freeze non-admin", "POST", f"/v1/billing/wallets/{b}/freeze", kb)
    call("freeze", "POST", f"/v1/billing/wallets/{b}/freeze", admin_key)
    call(
        "deposit frozen",
        "POST",
        f"/v1/billing/wallets/{b}/deposit",
        admin_key,
        json={"amount": "1.00"},
    )
    call("unfreeze", "POST", f"/v1/billing/wallets/{b}/unfreeze", admin_key)
    call(
        "metrics tier 403",
        "POST",
        f"/v1/identity/agents/{a}/metrics",
        ka,
        json={"metrics": {"uptime": 99.9}},
    )
    call(
        "escrow tier 403",
        "POST",
        "/v1/payments/escrows",
        ka,
        json={"payer": a, "payee": b, "amount": "5.00"},
    )
    pa, pb = mint(a, "pro"), mint(b, "pro")
    call("balance pro", "GET", f"/v1/billing/wallets/{a}/balance", pa)
    call(
        "metrics",
        "POST",
        f"/v1/identity/agents/{a}/metrics",
        pa,
        json={"metrics": {"p99_latency_ms": 800, "accuracy": 0.9}},
    )
    call("claims", "GET", f"/v1/identity/agents/{a}/claims", kb)
    call("identity", "GET", f"/v1/identity/agents/{a}", kb)
    call("reputation", "GET", f"/v1/identity/agents/{a}/reputation", kb)
    r = call(
        "intent",
        "POST",
        "/v1/payments/intents",
        ka,
        json={"payer": a, "payee": b, "amount": "5.00"},
        headers={"Idempotency-Key": f"i-{run}"},
    )
    call("intent capture", "POST", f"/v1/payments/intents/{r.json()['id']}/capture", ka)
    r = call(
        "escrow",
        "POST",
        "/v1/payments/escrows",
        pa,
        json={"payer": a, "payee": b, "amount": "20.00"},
    )
    eid = r.json()["id"]
    call("escrow get", "GET", f"/v1/payments/escrows/{eid}", kb)
    r = call(
        "dispute",
        "POST",
        "/v1/disputes",
        pa,
        json={"escrow_id": eid, "opener": a, "reason": "p99 over SLA"},
    )
    did = r.json()["id"]
    call(
        "dispute respond",
        "POST",
        f"/v1/disputes/{did}/respond",
        pb,
        json={"respondent": b, "response": "upstream"},
    )
    call(
        "dispute resolve non-admin",
        "POST",
        f"/v1/disputes/{did}/resolve",
        pa,
        json={"resolution": "refund", "resolved_by": a},
    )
    call(
        "dispute resolve",
        "POST",
        f"/v1/disputes/{did}/resolve",
        admin_key,
        json={"resolution": "refund", "resolved_by": "fleet-admin", "notes": "n"},
    )
    call("dispute get", "GET", f"/v1/disputes/{did}", kb)
    call(
        "message",
        "POST",
        "/v1/messaging/messages",
        ka,
        json={"sender": a, "recipient": b, "message_type": "text", "subject": "s", "body": "b"},
    )
    call(
        "message spoof",
        "POST",
        "/v1/messaging/messages",
        ka,
        json={"sender": b, "recipient": a, "message_type": "text"},
    )
    call("messages", "GET", "/v1/messaging/messages", kb, params={"agent_id": b})
    call(
        "publish",
        "POST",
        "/v1/infra/events",
        ka,
        json={"event_type": "fleet.agent.heartbeat", "source": a, "payload": {"ok": True}},
    )
    call("events", "GET", "/v1/infra/events", kb, params={"limit": 1})
    # Identity keys: ours replaces registration's for the agent itself, not for another;
    # an identity made first (admin) is kept by registration; the gateway verifies with it.
    ours, theirs = "11" * 32, "22" * 32
    call(
        "identity set own",
        "POST",
        "/v1/identity/agents",
        ka,
        json={"agent_id": a, "public_key": ours},
    )
    call(
        "identity set other 403",
        "POST",
        "/v1/identity/agents",
        kb,
        json={"agent_id": a, "public_key": theirs},
    )
    call("identity after set", "GET", f"/v1/identity/agents/{a}", kb)
    first = f"t-sbxdiff-{run}-c"
    call(
        "identity first",
        "POST",
        "/v1/identity/agents",
        admin_key,
        json={"agent_id": first, "public_key": ours},
    )
    call(
        "identity first again",
        "POST",
        "/v1/identity/agents",
        admin_key,
        json={"agent_id": first, "public_key": ours},
    )
    call("register after identity", "POST", "/v1/register", json={"agent_id": first})
    call(
        "verify bad signature",
        "POST",
        f"/v1/identity/agents/{a}/verify",
        kb,
        json={"message": "m", "signature": "00" * 64},
    )
    call("stream bad key", "GET", "/v1/events/stream", "a2a_free_" + "0" * 24)
    call("estimate unknown", "GET", "/v1/billing/estimate", ka, params={"tool_name": "nope"})
    call("estimate", "GET", "/v1/billing/estimate", ka, params={"tool_name": "best_match"})
    call("keys admin", "GET", "/v1/infra/keys", admin_key, params={"agent_id": b})
    call("rotate no confirm", "POST", "/v1/infra/keys/rotate", admin_key, json={"current_key": kb})
    call(
        "rotate non-admin",
        "POST",
        "/v1/infra/keys/rotate",
        kb,
        json={"current_key": kb},
        headers={"X-Rotate-Confirmation": "confirm"},
    )
    call(
        "rotate",
        "POST",
        "/v1/infra/keys/rotate",
        admin_key,
        json={"current_key": kb},
        headers={"X-Rotate-Confirmation": "confirm"},
    )
    call("old key in grace", "GET", f"/v1/billing/wallets/{b}/balance", kb)
    call("unknown path", "GET", "/v1/nothing-here", ka)
    return steps


def diff(left: list[Step], right: list[Step]) -> list[str]:
    """One line per step whose reduced answers differ."""
    out = []
    for x, y in zip(left, right, strict=True):
        if x != y:
            out.append(f"{x[0]}: {x[1:]} != {y[1:]}")
    return out
