"""A scripted double of the gateway's REST API for unit tests, behind httpx.MockTransport.

Paths, methods, status codes, problem bodies and answer shapes follow the
real gateway 1.4.8 as recorded in real-gateway.md (§3-§8): keys carry the
tier, wallets are own-agent-or-admin, freeze/rotate/resolve/key lists are
admin only, pro-only tools refuse free keys with ``insufficient-tier``,
money moves replay under their Idempotency-Key. It records every request so
a test can say which key did what.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from fleet.gateway import GatewayClient, StaticKeyRing
from fleet.gateway._core import GatewayConfig
from fleet.gateway.keys import KeyRing

ADMIN_KEY = "a2a_admin_000000000000000000000000"
ADMIN_AGENT = "fleet-admin"
GRACE_S = 300
METRICS = {
    "accuracy",
    "error_rate",
    "p50_latency_ms",
    "p95_latency_ms",
    "p99_latency_ms",
    "success_rate",
    "task_completion_rate",
    "uptime",
}
PRO_ONLY = {"submit_metrics", "build_claim_chain", "register_service", "open_dispute"}
CENT = Decimal("0.01")


def key_hash_prefix(key: str) -> str:
    import hashlib

    return hashlib.sha3_256(key.encode()).hexdigest()[:8]


@dataclass
class Key:
    agent_id: str
    tier: str
    revoked_at: float | None = None


@dataclass
class Wallet:
    balance: Decimal = Decimal("500.00")
    frozen: bool = False
    budget: dict[str, Any] | None = None


@dataclass
class Seen:
    method: str
    path: str
    tool: str
    agent: str | None  # whose key (ADMIN_AGENT for the admin key)
    body: dict[str, Any]
    idempotency_key: str | None


@dataclass
class RestGateway:
    now: Callable[[], float] = lambda: 1_796_000_000.0
    keys: dict[str, Key] = field(default_factory=dict)
    wallets: dict[str, Wallet] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)
    chains: dict[str, int] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    escrows: dict[str, dict[str, Any]] = field(default_factory=dict)
    disputes: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    # tool -> statuses to answer before handling, one per call (503, 500, 400 ...)
    fail: dict[str, list[int]] = field(default_factory=dict)
    # tool -> number of calls to process and then answer 503 (the answer is lost)
    lose_answer: dict[str, int] = field(default_factory=dict)
    _replays: dict[str, tuple[str, int, dict[str, Any]]] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.keys[ADMIN_KEY] = Key(ADMIN_AGENT, "admin")

    # ---------------------------------------------------------------- set-up helpers

    def register(self, agent_id: str, balance: str = "500.00") -> str:
        key = f"a2a_free_{secrets.token_hex(12)}"
        self.keys[key] = Key(agent_id, "free")
        self.wallets[agent_id] = Wallet(Decimal(balance))
        self.identities[agent_id] = secrets.token_hex(32)
        return key

    def mint(self, agent_id: str, tier: str) -> str:
        """What the operator's tooling does outside the API."""
        key = f"a2a_{tier}_{secrets.token_hex(12)}"
        self.keys[key] = Key(agent_id, tier)
        return key

    def live_keys(self, agent_id: str) -> list[str]:
        return [k for k, v in self.keys.items() if v.agent_id == agent_id and self._valid(v)]

    def calls(self, tool: str) -> list[Seen]:
        return [s for s in self.seen if s.tool == tool]

    def client(self, keys: KeyRing | None = None) -> GatewayClient:
        config = GatewayConfig(
            url="http://gateway.test", max_attempts=2, backoff_initial_s=0, backoff_max_s=0
        )
        return GatewayClient(
            config,
            keys if keys is not None else StaticKeyRing(ADMIN_KEY),
            transport=httpx.MockTransport(self.handle),
            sleep=lambda s: None,
        )

    # ---------------------------------------------------------------- transport

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            return self._handle(request)

    def _valid(self, key: Key) -> bool:
        return key.revoked_at is None or self.now() < key.revoked_at + GRACE_S

    def _handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        path, method = request.url.path, request.method
        route = self._route(method, path)
        if route is None:
            return _problem(404, "not-found", f"no route {method} {path}")
        tool, handler, params = route
        raw = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        key = self.keys.get(raw) if raw else None
        self.seen.append(
            Seen(
                method,
                path,
                tool,
                key.agent_id if key else None,
                body,
                request.headers.get("idempotency-key"),
            )
        )
        if self.fail.get(tool):
            status = self.fail[tool].pop(0)
            return _problem(status, "scripted", f"scripted {status}")
        if tool != "register_agent":
            if key is None:
                return _problem(401, "authentication-error", "API key not found")
            if not self._valid(key):
                return _problem(401, "authentication-error", "API key has been revoked")
            if tool in PRO_ONLY and key.tier not in ("pro", "enterprise", "admin"):
                return _problem(
                    403,
                    "insufficient-tier",
                    f"Tier '{key.tier}' cannot access tool '{tool}' (requires 'pro')",
                )
        idem = request.headers.get("idempotency-key")
        if idem and idem in self._replays:
            seen_body, status, answer = self._replays[idem]
            if seen_body != json.dumps(body, sort_keys=True):
                return _problem(409, "idempotency-key-reused", "different body")
            return httpx.Response(status, json=answer)
        response = handler(key, body, dict(request.url.params), *params)
        if isinstance(response, httpx.Response):
            return response
        status, answer = response
        if idem and status < 400:
            self._replays[idem] = (json.dumps(body, sort_keys=True), status, answer)
        if self.lose_answer.get(tool):
            self.lose_answer[tool] -= 1
            return _problem(503, "unavailable", "connection dropped after processing")
        return httpx.Response(status, json=answer, headers={"X-Charged": "0.00"})

    def _route(self, method: str, path: str) -> tuple[str, Any, tuple[str, ...]] | None:
        for m, pattern, tool, handler in _ROUTES:
            if m != method:
                continue
            match = re.fullmatch(pattern, path)
            if match:
                return tool, getattr(self, handler), match.groups()
        return None

    # ---------------------------------------------------------------- ownership

    def _own(self, key: Key | None, agent_id: str) -> httpx.Response | None:
        assert key is not None
        if key.tier == "admin" or key.agent_id == agent_id:
            return None
        return _problem(403, "forbidden", "Forbidden: you do not have access to this resource")

    def _admin(self, key: Key | None) -> httpx.Response | None:
        assert key is not None
        if key.tier == "admin":
            return None
        return _problem(403, "admin-only", "admin only")

    # ---------------------------------------------------------------- handlers

    def h_register(self, key: Key | None, body: dict[str, Any], q: dict[str, str]) -> Any:
        agent_id = body["agent_id"]
        if agent_id in self.identities:
            return _problem(409, "already-exists", f"Agent {agent_id} already exists")
        api_key = self.register(agent_id)
        return 201, {
            "agent_id": agent_id,
            "api_key": api_key,
            "tier": "free",
            "balance": 500.0,
            "identity_registered": True,
            "public_key": self.identities[agent_id],
        }

    def h_identity(self, key: Key | None, body: Any, q: Any, agent_id: str) -> Any:
        if agent_id not in self.identities:
            return 200, {"agent_id": agent_id, "found": False}
        return 200, {
            "agent_id": agent_id,
            "public_key": self.identities[agent_id],
            "org_id": "default",
            "found": True,
        }

    def h_set_identity(self, key: Key | None, body: dict[str, Any], q: Any) -> Any:
        agent_id = body["agent_id"]
        refused = self._own(key, agent_id)
        if refused is not None:
            return refused
        self.identities[agent_id] = body["public_key"]
        return 201, {"agent_id": agent_id, "public_key": body["public_key"]}

    def _wallet(self, key: Key | None, agent_id: str) -> Wallet | httpx.Response:
        refused = self._own(key, agent_id)
        if refused is not None:
            return refused
        wallet = self.wallets.get(agent_id)
        if wallet is None:
            return _problem(404, "not-found", f"Wallet not found for agent: {agent_id}")
        return wallet

    def h_balance(self, key: Key | None, body: Any, q: Any, agent_id: str) -> Any:
        wallet = self._wallet(key, agent_id)
        if isinstance(wallet, httpx.Response):
            return wallet
        return 200, {"balance": str(wallet.balance.quantize(CENT))}

    def h_deposit(self, key: Key | None, body: dict[str, Any], q: Any, agent_id: str) -> Any:
        wallet = self._wallet(key, agent_id)
        if isinstance(wallet, httpx.Response):
            return wallet
        if wallet.frozen:
            return _problem(403, "wallet-frozen", f"Wallet {agent_id} is frozen")
        wallet.balance += Decimal(body["amount"])
        return 200, {"new_balance": str(wallet.balance), "transaction_id": next(self._ids)}

    def h_withdraw(self, key: Key | None, body: dict[str, Any], q: Any, agent_id: str) -> Any:
        wallet = self._wallet(key, agent_id)
        if isinstance(wallet, httpx.Response):
            return wallet
        if wallet.frozen:
            return _problem(403, "wallet-frozen", f"Wallet {agent_id} is frozen")
        amount = Decimal(body["amount"])
        if amount > wallet.balance:
            return _problem(
                402,
                "insufficient-balance",
                f"Requested {amount}, available {wallet.balance}",
            )
        wallet.balance -= amount
        return 200, {"new_balance": str(wallet.balance), "transaction_id": next(self._ids)}

    def h_set_budget(self, key: Key | None, body: dict[str, Any], q: Any, agent_id: str) -> Any:
        wallet = self._wallet(key, agent_id)
        if isinstance(wallet, httpx.Response):
            return wallet
        wallet.budget = {k: float(v) for k, v in body.items()}
        return 200, {"agent_id": agent_id, **wallet.budget}

    def h_budget(self, key: Key | None, body: Any, q: Any, agent_id: str) -> Any:
        wallet = self._wallet(key, agent_id)
        if isinstance(wallet, httpx.Response):
            return wallet
        budget = wallet.budget or {}
        return 200, {
            "daily_spend": 0.0,
            "daily_cap": budget.get("daily_cap"),
            "daily_pct": 0.0,
            "monthly_spend": 0.0,
            "monthly_cap": budget.get("monthly_cap"),
            "monthly_pct": 0.0,
            "alert_triggered": False,
            "cap_exceeded": False,
        }

    def h_usage(self, key: Key | None, body: Any, q: Any, agent_id: str) -> Any:
        wallet = self._wallet(key, agent_id)
        if isinstance(wallet, httpx.Response):
            return wallet
        calls = sum(1 for s in self.seen if agent_id in s.path)
        return 200, {"total_calls": calls, "total_cost": 0.0, "total_tokens": 0}

    def h_freeze(self, key: Key | None, body: Any, q: Any, agent_id: str) -> Any:
        return self._set_frozen(key, agent_id, True)

    def h_unfreeze(self, key: Key | None, body: Any, q: Any, agent_id: str) -> Any:
        return self._set_frozen(key, agent_id, False)

    def _set_frozen(self, key: Key | None, agent_id: str, frozen: bool) -> Any:
        refused = self._admin(key)
        if refused is not None:
            return refused
        if agent_id not in self.wallets:
            return _problem(404, "not-found", f"Wallet not found for agent: {agent_id}")
        self.wallets[agent_id].frozen = frozen
        return 200, {"agent_id": agent_id, "frozen": frozen}

    def h_metrics(self, key: Key | None, body: dict[str, Any], q: Any, agent_id: str) -> Any:
        refused = self._own(key, agent_id)
        if refused is not None:
            return refused
        unknown = sorted(set(body["metrics"]) - METRICS)
        if unknown:
            return _problem(400, "invalid-metric", f"Unsupported metric: {unknown[0]}")
        if any(isinstance(v, str) for v in body["metrics"].values()):
            return _problem(400, "validation-error", "metric values must be numbers")
        self.claims[agent_id] = dict(body["metrics"])
        return 200, {
            "agent_id": agent_id,
            "commitment_hashes": ["ab" * 32] * len(body["metrics"]),
            "verified_at": "2026-12-01T19:21:35Z",
            "valid_until": self.now() + 7 * 86400,
            "data_source": body.get("data_source", "self_reported"),
            "signature": "2cbf",
        }

    def h_chain(self, key: Key | None, body: Any, q: Any, agent_id: str) -> Any:
        refused = self._own(key, agent_id)
        if refused is not None:
            return refused
        chain_id = next(self._ids)
        self.chains[agent_id] = chain_id
        return 200, {
            "merkle_root": "49bc" * 16,
            "leaf_count": len(self.claims.get(agent_id, {})),
            "period_start": self.now(),
            "chain_id": chain_id,
        }

    def h_register_service(self, key: Key | None, body: dict[str, Any], q: Any) -> Any:
        extra = set(body) - {
            "provider_id",
            "name",
            "description",
            "category",
            "tools",
            "tags",
            "endpoint",
            "pricing",
        }
        if extra:
            return _problem(422, "validation-error", f"body.{sorted(extra)[0]}: Extra inputs")
        service_id = f"svc-{next(self._ids):012x}"
        self.services[service_id] = {**body, "id": service_id, "status": "active"}
        return 201, {"id": service_id, "name": body["name"], "status": "active"}

    def h_search_services(self, key: Key | None, body: Any, q: dict[str, str]) -> Any:
        tags = set(filter(None, q.get("tags", "").split(",")))
        found = [
            {"id": s["id"], "name": s["name"], "status": s["status"]}
            for s in self.services.values()
            if s["status"] == "active" and tags <= set(s["tags"])
        ]
        return 200, {"services": found[: int(q.get("limit", 20))]}

    def h_get_service(self, key: Key | None, body: Any, q: Any, service_id: str) -> Any:
        service = self.services.get(service_id)
        if service is None:
            return _problem(404, "not-found", "Service not found")
        return 200, {"id": service_id, "name": service["name"], "status": service["status"]}

    def h_deactivate(self, key: Key | None, body: Any, q: Any, service_id: str) -> Any:
        service = self.services.get(service_id)
        if service is None:
            return _problem(404, "not-found", "Service not found")
        service["status"] = "inactive"
        return 200, {"id": service_id, "name": service["name"], "status": "inactive"}

    def h_list_keys(self, key: Key | None, body: Any, q: dict[str, str]) -> Any:
        refused = self._admin(key)
        if refused is not None:
            return refused
        agent = q.get("agent_id")
        return 200, {
            "keys": [
                {
                    "key_hash_prefix": key_hash_prefix(k),
                    "agent_id": v.agent_id,
                    "tier": v.tier,
                    "revoked": v.revoked_at is not None,
                }
                for k, v in self.keys.items()
                if agent is None or v.agent_id == agent
            ]
        }

    def h_rotate(self, key: Key | None, body: dict[str, Any], q: Any) -> Any:
        refused = self._admin(key)
        if refused is not None:
            return refused
        current = self.keys.get(body["current_key"])
        if current is None or not self._valid(current):
            return _problem(401, "authentication-error", "API key not found")
        current.revoked_at = current.revoked_at or self.now()
        new_key = f"a2a_{current.tier}_{secrets.token_hex(12)}"
        self.keys[new_key] = Key(current.agent_id, current.tier)
        return 200, {
            "new_key": new_key,
            "tier": current.tier,
            "agent_id": current.agent_id,
            "revoked": False,
            "grace_period_seconds": GRACE_S,
            "grace_expires_at": current.revoked_at + GRACE_S,
        }

    def h_message(self, key: Key | None, body: dict[str, Any], q: Any) -> Any:
        refused = self._own(key, body["sender"])
        if refused is not None:
            return refused
        message_id = f"{next(self._ids):032x}"
        self.messages.append({**body, "id": message_id})
        return 201, {
            "id": message_id,
            "sender": body["sender"],
            "recipient": body["recipient"],
            "message_type": body["message_type"],
            "thread_id": None,
            "created_at": "2026-12-01T19:30:00Z",
        }

    def h_escrow(self, key: Key | None, body: Any, q: Any, escrow_id: str) -> Any:
        escrow = self.escrows.get(escrow_id)
        if escrow is None:
            return _problem(404, "not-found", "Escrow not found")
        return 200, {"id": escrow_id, "status": escrow["status"], "amount": escrow["amount"]}

    def h_open_dispute(self, key: Key | None, body: dict[str, Any], q: Any) -> Any:
        refused = self._own(key, body["opener"])
        if refused is not None:
            return refused
        escrow = self.escrows.get(body["escrow_id"])
        if escrow is None or escrow["status"] != "held":
            return _problem(409, "dispute_state_error", "Cannot dispute escrow")
        dispute_id = f"{next(self._ids):032x}"
        self.disputes[dispute_id] = {**body, "status": "open"}
        return 201, {"id": dispute_id, "status": "open", "deadline_at": self.now() + 7 * 86400}

    def h_resolve(self, key: Key | None, body: dict[str, Any], q: Any, dispute_id: str) -> Any:
        refused = self._admin(key)
        if refused is not None:
            return refused
        dispute = self.disputes[dispute_id]
        if dispute["status"] != "open":
            return _problem(409, "dispute_state_error", "Cannot resolve dispute in 'resolved'")
        dispute.update(status="resolved", **body)
        self.escrows[dispute["escrow_id"]]["status"] = (
            "refunded" if body["resolution"] == "refund" else "released"
        )
        return 200, {"id": dispute_id, "status": "resolved", "resolution": body["resolution"]}

    def h_publish(self, key: Key | None, body: dict[str, Any], q: Any) -> Any:
        event_id = len(self.events) + 1
        self.events.append({**body, "id": event_id, "created_at": "2026-12-01T19:23:25"})
        return 200, {"event_id": event_id}

    def h_events(self, key: Key | None, body: Any, q: dict[str, str]) -> Any:
        since = int(q.get("since_id", 0))
        wanted = q.get("event_type")
        found = [
            e for e in self.events if e["id"] > since and (not wanted or e["event_type"] == wanted)
        ]
        return 200, {"events": found[: int(q.get("limit", 100))]}


def _problem(status: int, code: str, detail: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={
            "type": f"https://api.greenhelix.net/errors/{code}",
            "title": code,
            "status": status,
            "detail": detail,
        },
        headers={"content-type": "application/problem+json"},
    )


_W = r"/v1/billing/wallets/([^/]+)"
_ROUTES: list[tuple[str, str, str, str]] = [
    ("POST", r"/v1/register", "register_agent", "h_register"),
    ("POST", r"/v1/identity/agents", "register_identity", "h_set_identity"),
    ("GET", r"/v1/identity/agents/([^/]+)", "get_agent_identity", "h_identity"),
    ("POST", r"/v1/identity/agents/([^/]+)/metrics", "submit_metrics", "h_metrics"),
    ("POST", r"/v1/identity/agents/([^/]+)/claim-chains", "build_claim_chain", "h_chain"),
    ("GET", _W + "/balance", "get_balance", "h_balance"),
    ("POST", _W + "/deposit", "deposit", "h_deposit"),
    ("POST", _W + "/withdraw", "withdraw", "h_withdraw"),
    ("PUT", _W + "/budget", "set_budget_cap", "h_set_budget"),
    ("GET", _W + "/budget", "get_budget_status", "h_budget"),
    ("GET", _W + "/usage", "get_usage_summary", "h_usage"),
    ("POST", _W + "/freeze", "freeze_wallet", "h_freeze"),
    ("POST", _W + "/unfreeze", "unfreeze_wallet", "h_unfreeze"),
    ("POST", r"/v1/marketplace/services", "register_service", "h_register_service"),
    ("GET", r"/v1/marketplace/services", "search_services", "h_search_services"),
    ("GET", r"/v1/marketplace/services/([^/]+)", "get_service", "h_get_service"),
    ("POST", r"/v1/marketplace/services/([^/]+)/deactivate", "deactivate_service", "h_deactivate"),
    ("GET", r"/v1/infra/keys", "list_api_keys", "h_list_keys"),
    ("POST", r"/v1/infra/keys/rotate", "rotate_key", "h_rotate"),
    ("POST", r"/v1/messaging/messages", "send_message", "h_message"),
    ("GET", r"/v1/payments/escrows/([^/]+)", "get_escrow", "h_escrow"),
    ("POST", r"/v1/disputes", "open_dispute", "h_open_dispute"),
    ("POST", r"/v1/disputes/([^/]+)/resolve", "resolve_dispute", "h_resolve"),
    ("POST", r"/v1/infra/events", "publish_event", "h_publish"),
    ("GET", r"/v1/infra/events", "get_events", "h_events"),
]
