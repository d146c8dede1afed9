"""The operator's control API (``/_sandbox/...``, admin key only) and a small client for it.

Paths (none exists on the real gateway; none is faulted or counted):

=====================================  =========================================================
``GET /_sandbox/health``               status, uptime, agent count, data file
``GET /_sandbox/counters``             ``{"total", "in_flight", "tools": {tool: n}, "statuses":
                                       {tool: {"200": n, ...}}, "agents": {id: {tool: n}}}``;
                                       ``?agents=0`` omits agents, ``?agent_prefix=P`` filters
``POST /_sandbox/counters/reset``      zero the counters
``GET|PUT|DELETE /_sandbox/faults``    the fault document (see :mod:`sandbox.faults`); PUT merges
``POST /_sandbox/seed``                ``{"agents": N, "prefix"?, "tier"?, "balance"?, "profile"?}``
                                       → ``{"seeded", "agents": [{"agent_id", "api_key"}]}``
``POST /_sandbox/keys``                ``{"agent_id", "tier"}``: mint a key of any tier for an
                                       existing agent (what the real gateway's operator does
                                       outside its API) → ``{"key", "agent_id", "tier"}``
``GET /_sandbox/agents/{id}``          agent, keys, wallet, rate window, profile
``PUT /_sandbox/agents/{id}``          ``{"profile": "degrading"}``: pin a behaviour from now
``PUT /_sandbox/agents/{id}/identity-key``
                                       ``{"private_key": "<64 hex>"}``: the agent's runtime now
                                       holds its identity key (the one our provisioning made):
                                       it heartbeats by its profile. 400 unless the key's public
                                       half is the identity key on record
                                       → ``{"agent_id", "public_key", "heartbeating"}``
``POST /_sandbox/heartbeats/burst``    ``{"rounds": N, "agents": [ids] | count}`` (default every
                                       agent that heartbeats): N rounds of signed heartbeats of
                                       those agents, signed first, then put on the bus at once
                                       → ``{"published", "agents", "first_id", "last_id",
                                       "signed_in_s"}``
``GET /_sandbox/heartbeats``           the cadence, how many agents heartbeat, how many were sent
``POST /_sandbox/tick``                every simulated agent spends what its profile spent since
                                       the last tick, and every agent that heartbeats publishes
                                       one signed ``fleet.agent.heartbeat`` now
``POST /_sandbox/flush``               write the state file now
``GET /_sandbox/state``                counts of agents, keys, wallets, escrows, disputes, events
``POST /_sandbox/reset``               wipe state and counters, restore start-up faults
=====================================  =========================================================
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from aiohttp import web

from sandbox.behaviour import PROFILE_IDS, PROFILE_NAMES
from sandbox.faults import FaultConfigError
from sandbox.state import TIERS

if TYPE_CHECKING:
    from sandbox.server import Sandbox

SEED_LISTED = 20_000
# Events one burst may put on the bus (the bus keeps 200,000).
MAX_BURST = 200_000


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": {"code": code, "message": message}}),
        status=status,
        content_type="application/json",
    )


def _ok(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def add_control_routes(app: web.Application, sb: Sandbox) -> None:
    admin = sb.options.admin_key

    def guarded(fn: Any) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            auth = request.headers.get("Authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if (token or request.headers.get("X-API-Key", "")) != admin:
                return _error(401, "unauthorized", "the control API needs the admin key")
            body: Any = None
            if request.method in ("POST", "PUT"):
                raw = await request.read()
                if raw:
                    try:
                        body = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        return _error(400, "bad_json", "body is not JSON")
                if body is not None and not isinstance(body, dict):
                    return _error(400, "bad_body", "body must be a JSON object")
            result: web.StreamResponse = await fn(request, body or {})
            return result

        return handle

    async def health(request: web.Request, body: dict[str, Any]) -> web.Response:
        return _ok(
            {
                "status": "ok",
                "uptime_s": round(time.monotonic() - sb.started, 3),
                "agents": len(sb.state.agents),
                "data_file": str(sb.store.path) if sb.store.path else None,
            }
        )

    async def counters(request: web.Request, body: dict[str, Any]) -> web.Response:
        q = request.query
        return _ok(sb.counters.view(q.get("agents", "1") != "0", q.get("agent_prefix", "")))

    async def counters_reset(request: web.Request, body: dict[str, Any]) -> web.Response:
        sb.counters.reset()
        return _ok({"reset": True})

    async def faults_get(request: web.Request, body: dict[str, Any]) -> web.Response:
        return _ok(sb.faults.view(time.time()))

    async def faults_put(request: web.Request, body: dict[str, Any]) -> web.Response:
        try:
            sb.faults.apply(body, time.time())
        except FaultConfigError as exc:
            return _error(400, "bad_fault", str(exc))
        return _ok(sb.faults.view(time.time()))

    async def faults_delete(request: web.Request, body: dict[str, Any]) -> web.Response:
        sb.faults.clear()
        return _ok(sb.faults.view(time.time()))

    async def seed(request: web.Request, body: dict[str, Any]) -> web.Response:
        count = body.get("agents")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 200_000:
            return _error(400, "bad_agents", "agents: must be an integer 0..200000")
        prefix = body.get("prefix", sb.options.seed_prefix)
        if not isinstance(prefix, str) or not prefix or len(prefix) > 60:
            return _error(400, "bad_prefix", "prefix: must be a non-empty string of ≤ 60")
        tier = body.get("tier", "free")
        if tier not in TIERS:
            return _error(400, "bad_tier", f"tier: must be one of {', '.join(TIERS)}")
        profile = body.get("profile")
        if profile is not None and profile not in PROFILE_IDS:
            return _error(400, "bad_profile", f"profile: one of {', '.join(PROFILE_NAMES)}")
        balance = None
        if body.get("balance") is not None:
            try:
                balance = Decimal(str(body["balance"]))
            except InvalidOperation:
                return _error(400, "bad_balance", "balance: must be a decimal")
        made = sb.seed(count, prefix, tier=tier, balance=balance, profile=profile)
        return _ok(
            {
                "seeded": len(made),
                "agents": [{"agent_id": a, "api_key": k} for a, k in made[:SEED_LISTED]],
            }
        )

    async def mint_key(request: web.Request, body: dict[str, Any]) -> web.Response:
        agent_id = body.get("agent_id")
        tier = body.get("tier")
        if not isinstance(agent_id, str) or agent_id not in sb.state.agents:
            return _error(404, "unknown_agent", f"agent_id: no agent {agent_id!r}")
        if tier not in TIERS:
            return _error(400, "bad_tier", f"tier: must be one of {', '.join(TIERS)}")
        key = sb.state.add_key(agent_id, tier, time.time())
        return _ok({"key": key.key, "agent_id": agent_id, "tier": tier})

    async def agent_get(request: web.Request, body: dict[str, Any]) -> web.Response:
        agent_id = request.match_info["agent_id"]
        st = sb.state
        agent = st.agents.get(agent_id)
        if agent is None:
            return _error(404, "unknown_agent", f"no agent {agent_id!r}")
        wallet = st.wallets.get(agent_id)
        now = time.time()
        return _ok(
            {
                "agent_id": agent_id,
                "profile": PROFILE_NAMES[agent.profile],
                "simulated": agent.simulated,
                "keys": [
                    {"key": k.key, "tier": k.tier, "scopes": k.scopes, "revoked_at": k.revoked_at}
                    for k in st.keys_by_agent.get(agent_id, [])
                ],
                "wallet": None
                if wallet is None
                else {
                    "balance": str(wallet.balance),
                    "frozen": wallet.frozen,
                    "daily_cap": None if wallet.daily_cap is None else str(wallet.daily_cap),
                    "monthly_cap": None if wallet.monthly_cap is None else str(wallet.monthly_cap),
                    "calls": wallet.calls,
                    "calls_cost": str(wallet.calls_cost),
                },
                "window_count": sum(1 for t in st.windows.get(agent_id, ()) if t >= now - 3600),
                "metrics": st.behaviour_metrics(agent, now) if agent.simulated else None,
            }
        )

    async def agent_put(request: web.Request, body: dict[str, Any]) -> web.Response:
        agent = sb.state.agents.get(request.match_info["agent_id"])
        if agent is None:
            return _error(404, "unknown_agent", "no such agent")
        profile = body.get("profile")
        if profile not in PROFILE_IDS:
            return _error(400, "bad_profile", f"profile: one of {', '.join(PROFILE_NAMES)}")
        now = time.time()
        sb.state.settle(agent, now)
        agent.profile = PROFILE_IDS[profile]
        agent.origin = agent.settled_to = now
        agent.simulated = True
        sb.state.touch("agent", agent.agent_id)
        return _ok({"agent_id": agent.agent_id, "profile": profile})

    async def tick(request: web.Request, body: dict[str, Any]) -> web.Response:
        st = sb.state
        now = time.time()
        for agent in list(st.agents.values()):
            if agent.simulated:
                st.settle(agent, now)
        beats = sb.runtimes.beat_all(now)
        sb.notify()
        return _ok({"heartbeats": beats})

    async def identity_key(request: web.Request, body: dict[str, Any]) -> web.Response:
        agent_id = request.match_info["agent_id"]
        private_key = body.get("private_key")
        if not isinstance(private_key, str):
            return _error(400, "bad_key", "private_key: must be 64 hex characters")
        try:
            public = sb.runtimes.hand_key(agent_id, private_key)
        except LookupError as exc:
            return _error(404, "unknown_agent", str(exc))
        except ValueError as exc:
            return _error(400, "bad_key", f"private_key: {exc}")
        agent = sb.state.agents[agent_id]
        return _ok(
            {
                "agent_id": agent_id,
                "public_key": public,
                "heartbeating": PROFILE_NAMES[agent.profile] != "dead",
            }
        )

    async def burst(request: web.Request, body: dict[str, Any]) -> web.Response:
        rounds = body.get("rounds", 1)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= 1000:
            return _error(400, "bad_rounds", "rounds: must be an integer 1..1000")
        agents = body.get("agents")
        valid_list = isinstance(agents, list) and all(isinstance(a, str) for a in agents)
        valid_count = isinstance(agents, int) and not isinstance(agents, bool) and agents >= 0
        if agents is not None and not (valid_list or valid_count):
            return _error(400, "bad_agents", "agents: a list of agent ids or a count")
        runtimes = sb.runtimes
        started = time.monotonic()
        # Picking (keys derived on first use) and signing are the slow part, and the
        # bench measures ingest: both off the loop, then everything published at once.
        among = list(sb.state.agents.values())
        try:
            picked = await asyncio.to_thread(runtimes.pick, agents, among)
        except LookupError as exc:
            return _error(404, "unknown_agent", str(exc))
        except ValueError as exc:
            return _error(400, "cannot_sign", str(exc))
        if len(picked) * rounds > MAX_BURST:
            return _error(400, "too_many", f"rounds x agents must be at most {MAX_BURST}")
        now = time.time()
        signed = await asyncio.to_thread(runtimes.sign_burst, rounds, picked, now)
        signed_in = time.monotonic() - started
        done = runtimes.publish_burst(signed, time.time())
        sb.notify()
        return _ok(
            {
                "published": done.published,
                "agents": done.agents,
                "first_id": done.first_id,
                "last_id": done.last_id,
                "signed_in_s": round(signed_in, 3),
            }
        )

    async def heartbeats(request: web.Request, body: dict[str, Any]) -> web.Response:
        runtimes = sb.runtimes
        return _ok(
            {
                "interval_s": runtimes.interval_s,
                "agents": sum(1 for _ in runtimes.heartbeating()),
                "sent": runtimes.sent,
            }
        )

    async def flush(request: web.Request, body: dict[str, Any]) -> web.Response:
        sb.store.flush()
        return _ok({"flushed": True})

    async def state(request: web.Request, body: dict[str, Any]) -> web.Response:
        st = sb.state
        return _ok(
            {
                "agents": len(st.agents),
                "keys": len(st.keys),
                "wallets": len(st.wallets),
                "frozen_wallets": sum(1 for w in st.wallets.values() if w.frozen),
                "intents": len(st.intents),
                "escrows": len(st.escrows),
                "disputes": len(st.disputes),
                "services": len(st.services),
                "messages": len(st.messages),
                "events": len(st.events),
            }
        )

    async def reset(request: web.Request, body: dict[str, Any]) -> web.Response:
        sb.state.reset()
        sb.counters.reset()
        sb.faults = sb._startup_faults()
        sb._ensure_admin()
        return _ok({"reset": True})

    r = app.router
    r.add_get("/_sandbox/health", guarded(health))
    r.add_get("/_sandbox/counters", guarded(counters))
    r.add_post("/_sandbox/counters/reset", guarded(counters_reset))
    r.add_get("/_sandbox/faults", guarded(faults_get))
    r.add_put("/_sandbox/faults", guarded(faults_put))
    r.add_delete("/_sandbox/faults", guarded(faults_delete))
    r.add_post("/_sandbox/seed", guarded(seed))
    r.add_post("/_sandbox/keys", guarded(mint_key))
    r.add_get("/_sandbox/agents/{agent_id}", guarded(agent_get))
    r.add_put("/_sandbox/agents/{agent_id}", guarded(agent_put))
    r.add_put("/_sandbox/agents/{agent_id}/identity-key", guarded(identity_key))
    r.add_post("/_sandbox/heartbeats/burst", guarded(burst))
    r.add_get("/_sandbox/heartbeats", guarded(heartbeats))
    r.add_post("/_sandbox/tick", guarded(tick))
    r.add_post("/_sandbox/flush", guarded(flush))
    r.add_get("/_sandbox/state", guarded(state))
    r.add_post("/_sandbox/reset", guarded(reset))


class SandboxError(RuntimeError):
    """The control API refused a request; ``status`` and ``code`` say why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


class SandboxControl:
    """Client of one sandbox's control API; ``url`` is the gateway's base URL."""

    def __init__(
        self, base_url: str, admin_key: str = "sandbox-admin-key", *, timeout_s: float = 30.0
    ) -> None:
        self.url = base_url.rstrip("/")
        self.gateway_url = self.url
        self.admin_key = admin_key
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=httpx.Timeout(timeout_s, connect=5.0),
        )

    def _request(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        response = self._http.request(method, "/_sandbox" + path, json=json, params=params)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise SandboxError(
                response.status_code,
                str(error.get("code", "error")),
                str(error.get("message", response.text[:200])),
            )
        return body

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SandboxControl:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/health")
        return result

    def wait_ready(self, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                return self.health()
            except (httpx.TransportError, SandboxError) as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(f"sandbox at {self.url} not ready after {timeout} s: {last}")
            time.sleep(0.05)

    def counters(self, *, agents: bool = True, agent_prefix: str = "") -> dict[str, Any]:
        params = {"agents": "1" if agents else "0", "agent_prefix": agent_prefix}
        result: dict[str, Any] = self._request("GET", "/counters", params=params)
        return result

    def reset_counters(self) -> None:
        self._request("POST", "/counters/reset")

    def faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/faults")
        return result

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._request("PUT", "/faults", json=faults)
        return result

    def clear_faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("DELETE", "/faults")
        return result

    def seed(self, agents: int, prefix: str = "sim", **options: Any) -> dict[str, Any]:
        """Seed registered agents; options: tier, balance, profile."""
        body = {"agents": agents, "prefix": prefix, **options}
        result: dict[str, Any] = self._request("POST", "/seed", json=body)
        return result

    def list_service(
        self,
        agent_id: str,
        capabilities: list[str],
        *,
        cost: str = "0.05",
        trust_score: float = 0.9,
    ) -> dict[str, Any]:
        """List a simulated agent in the marketplace, its endpoint its A2A endpoint."""
        body = {
            "agent_id": agent_id,
            "capabilities": capabilities,
            "cost": cost,
            "trust_score": trust_score,
        }
        result: dict[str, Any] = self._request("POST", "/a2a/services", json=body)
        return result

    def mint_key(self, agent_id: str, tier: str) -> str:
        """A new key of ``tier`` for an existing agent."""
        return str(self._request("POST", "/keys", json={"agent_id": agent_id, "tier": tier})["key"])

    def agent(self, agent_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/agents/{agent_id}")
        return result

    def set_profile(self, agent_id: str, profile: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request(
            "PUT", f"/agents/{agent_id}", json={"profile": profile}
        )
        return result

    def hand_identity_key(self, agent_id: str, private_key: str) -> dict[str, Any]:
        """Give the agent's runtime its identity key: from now on it heartbeats, signed."""
        result: dict[str, Any] = self._request(
            "PUT", f"/agents/{agent_id}/identity-key", json={"private_key": private_key}
        )
        return result

    def burst(self, rounds: int, agents: list[str] | int | None = None) -> dict[str, Any]:
        """``rounds`` signed heartbeats of each agent put on the bus at once."""
        body: dict[str, Any] = {"rounds": rounds}
        if agents is not None:
            body["agents"] = agents
        result: dict[str, Any] = self._request("POST", "/heartbeats/burst", json=body)
        return result

    def heartbeats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/heartbeats")
        return result

    def tick(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", "/tick")
        return result

    def flush(self) -> None:
        self._request("POST", "/flush")

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/state")
        return result

    def reset(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", "/reset")
        return result
