"""The HTTP server: the gateway's REST surface, its request pipeline, faults, counters, control API.

Every REST route runs the real gateway's pipeline in its order: fault
decision, key (401), admin guard (403 admin-only), tier (403
insufficient-tier), the per-agent sliding hour recorded before it is checked
(429), fee and balance (402), budget caps (402), body (422), idempotency
(replay or 409), then the operation with its ownership rules. Answers carry
``X-Charged`` and, except to admin keys and on 429s, ``X-RateLimit-*``.
``/_sandbox/...`` is the operator's control API (admin key only, never
faulted, not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from sandbox.agents import AgentRuntimes
from sandbox.behaviour import ProfileMix
from sandbox.fastpath import FastProtocol, Router, close_all
from sandbox.faults import (
    DROP,
    DROP_AFTER_COMMIT,
    ERROR,
    OUTAGE,
    PASS,
    RATE_LIMITED,
    TIMEOUT,
    Faults,
    retry_after_header,
)
from sandbox.routes import (
    ADMIN_ROUTER_TOOLS,
    ADMIN_TOOLS,
    PER_TOOL_LIMITS,
    ROUTES,
    Call,
    Route,
    required_tier,
    tool_cost,
)
from sandbox.state import BURST, RATE_LIMITS, TIER_RANK, Key, State, Store
from sandbox.validate import Problem, check_body, iso, serialize

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger("sandbox")

JSON = "application/json"
PROBLEM = "application/problem+json"
KNOWN_TOOLS = frozenset(r.tool for r in ROUTES) | {"atlas_broker", "submit_verification"}
VERSION = "1.4.8"
_ERROR_CODES = {500: "internal_error", 502: "bad_gateway", 503: "service_error", 504: "timeout"}
HOUR = 3600.0
PUBLIC_LIMIT = 1000
KEEPALIVE_S = 75.0


@dataclass
class SandboxOptions:
    """Everything the sandbox is started with (CLI flags map one to one)."""

    host: str = "127.0.0.1"
    port: int = 8765
    agents: int = 0
    seed: int = 42
    seed_prefix: str = "sim"
    latency_ms: float = 50.0
    latency_jitter_ms: float = 10.0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_s: float = 30.0
    admin_key: str = "sandbox-admin-key"
    data_dir: str = "var"
    # Keep state only in memory (tests that want a clean slate per process).
    memory: bool = False
    key_grace_s: float = 300.0
    sse_lifetime_s: float = 3600.0
    sse_heartbeat_s: float = 5.0
    # As the real stream: a read of at most sse_batch events every sse_poll_s
    # (0: wake on each publish, for benchmarks that measure the consumer).
    sse_poll_s: float = 1.0
    sse_batch: int = 100
    events_retention_s: float = 86400.0
    # Simulated agents heartbeat this often (0: only on /_sandbox/tick or bursts);
    # from settings it is the policy's monitoring.heartbeat_interval_s.
    heartbeat_interval_s: float = 60.0
    # The real server drops a keep-alive connection after some error answers.
    close_after_error: bool = True
    flush_interval_s: float = 0.5
    profile_mix: str | None = None
    faults: dict[str, Any] | None = None
    access_log: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SandboxOptions:
        sb = settings.sandbox
        values: dict[str, Any] = {
            "host": sb.host,
            "port": sb.port,
            "agents": sb.agents,
            "seed": sb.seed,
            "latency_ms": sb.latency_ms,
            "latency_jitter_ms": sb.latency_jitter_ms,
            "error_rate": sb.error_rate,
            "timeout_rate": sb.timeout_rate,
            "timeout_s": sb.timeout_s,
            "admin_key": settings.gateway.admin_key.get_secret_value(),
            "data_dir": str(settings.data_dir),
            "heartbeat_interval_s": settings.policy.monitoring.heartbeat_interval_s,
        }
        values.update(overrides)
        return cls(**values)


class Counters:
    """Calls per endpoint (tool), per agent per endpoint and per (endpoint, status)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.in_flight = 0
        self.tools: defaultdict[str, int] = defaultdict(int)
        self.agents: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.statuses: defaultdict[str, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )
        self.since = time.time()

    def view(self, with_agents: bool = True, agent_prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {
            "total": self.total,
            "in_flight": self.in_flight,
            "since": iso(self.since),
            "tools": dict(self.tools),
            "statuses": {tool: dict(s) for tool, s in self.statuses.items()},
        }
        if with_agents:
            out["agents"] = {
                a: dict(t) for a, t in self.agents.items() if a.startswith(agent_prefix)
            }
        return out


class Sandbox:
    """The running double: options, state, faults, counters, the admin identity."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.key_grace_s = options.key_grace_s
        self.mix = ProfileMix.parse(options.profile_mix) if options.profile_mix else ProfileMix()
        path = None if options.memory else Path(options.data_dir) / "sandbox.db"
        self.store = Store(path)
        self.state = State(seed=options.seed, mix=self.mix, store=self.store)
        self.state.events_retention_s = options.events_retention_s
        self.runtimes = AgentRuntimes(self.state, options.heartbeat_interval_s)
        self.started = time.monotonic()
        self.faults = self._startup_faults()
        self.counters = Counters()
        self.ip_window: defaultdict[str, list[float]] = defaultdict(list)
        self.changed = asyncio.Event()
        self.admin_agent = "fleet-admin"
        self._ensure_admin()
        if options.agents:
            self.seed(options.agents, options.seed_prefix)

    def _ensure_admin(self) -> None:
        """The admin key from the settings: an enterprise key with the admin scope."""
        now = time.time()
        st = self.state
        admin = self.admin_agent
        if admin not in st.agents:
            st.add_agent(admin, now, "idle")
        if admin not in st.wallets:
            st.add_wallet(admin, Decimal(1_000_000), now)
        token = self.options.admin_key
        if token not in st.keys:
            key = Key(token, admin, "enterprise", ["read", "write", "admin"], now)
            st.keys[token] = key
            st.keys_by_agent[admin].append(key)

    def _startup_faults(self) -> Faults:
        o = self.options
        faults = Faults(o.seed, KNOWN_TOOLS)
        faults.apply(
            {
                "latency_ms": o.latency_ms,
                "latency_jitter_ms": o.latency_jitter_ms,
                "timeout_s": o.timeout_s,
                "error_rate": o.error_rate,
                "timeout_rate": o.timeout_rate,
            },
            time.time(),
        )
        if o.faults:
            faults.apply(o.faults, time.time())
        return faults

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    # --- seeding ---------------------------------------------------------------------

    def seed(
        self,
        count: int,
        prefix: str,
        *,
        tier: str = "free",
        balance: Decimal | None = None,
        profile: str | None = None,
    ) -> list[tuple[str, str]]:
        """``count`` registered agents ``{prefix}-{i:05d}-{8hex}`` with keys; (id, key) pairs."""
        st = self.state
        now = time.time()
        out: list[tuple[str, str]] = []
        start = sum(1 for a in st.agents if a.startswith(prefix + "-"))
        for i in range(start, start + count):
            tag = hashlib.sha256(f"{self.options.seed}:{prefix}:{i}".encode()).hexdigest()[:8]
            agent_id = f"{prefix}-{i:05d}-{tag}"
            if agent_id in st.agents:
                continue
            _, key = st.register(agent_id, now, profile)
            if tier != "free":
                key = st.add_key(agent_id, tier, now)
            if balance is not None:
                wallet = st.wallets[agent_id]
                st.ledger(wallet, balance - wallet.balance, "deposit", "seed balance", now)
            st.agents[agent_id].simulated = True
            out.append((agent_id, key.key))
        return out

    # --- the per-agent hour -------------------------------------------------------------

    def rate(self, agent_id: str, tier: str, tool: str, now: float) -> int:
        """Record this call, then check the window (rejected calls count too)."""
        window = self.state.windows[agent_id]
        window.append(now)
        horizon = now - HOUR
        while window and window[0] < horizon:
            window.popleft()
        count = len(window)
        limit = RATE_LIMITS[tier]
        if count >= limit:
            burst_since = now - 60.0
            burst = 0
            for t in reversed(window):
                if t < burst_since:
                    break
                burst += 1
            if burst >= limit // 60 + BURST[tier]:
                raise Problem(
                    429, "rate_limit_exceeded", f"Rate limit exceeded: {count}/{limit} per hour"
                )
        tool_limit = PER_TOOL_LIMITS.get(tool)
        if tool_limit is not None:
            per_tool = self.state.windows[f"{agent_id}\x00{tool}"]
            per_tool.append(now)
            while per_tool and per_tool[0] < horizon:
                per_tool.popleft()
            # Counted with this call, as the gateway does: a limit of 20 answers 19.
            if len(per_tool) >= tool_limit:
                raise Problem(
                    429,
                    "rate_limit_exceeded",
                    f"Per-tool rate limit exceeded for '{tool}': {len(per_tool)}/"
                    f"{tool_limit} per hour",
                )
        return count


def rate_headers(limit: int, count: int, now: float) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(max(0, limit - count)),
        "X-RateLimit-Reset": str(max(1, math.ceil(HOUR - now % HOUR))),
    }


def problem_response(
    exc: Problem, path: str, headers: dict[str, str] | None = None, content_type: str = PROBLEM
) -> web.Response:
    return web.Response(
        body=orjson.dumps(exc.body(path)),
        status=exc.status,
        content_type=content_type,
        headers=headers,
    )


def _token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("X-API-Key") or None


async def _read_json(request: web.Request) -> Any:
    if not request.body_exists:
        return None
    raw = await request.read()
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Problem(422, "validation_error", "body: JSON decode error") from None


async def _faulted(
    sb: Sandbox, faults: Faults, request: web.Request, tool: str, now: float
) -> web.Response | None:
    """Misbehave as the fault config says (after its latency): a response to send, or None."""
    if faults.killed(tool):
        _drop(request)
        raise asyncio.CancelledError
    if not faults.active:
        return None
    decision, status, retry = faults.decide(tool, now)
    if decision == PASS or decision == DROP_AFTER_COMMIT:
        request["drop_after_commit"] = decision == DROP_AFTER_COMMIT
        return None
    sb.counters.statuses[tool][str(status or "dropped")] += 1
    if decision == DROP:
        _drop(request)
        raise asyncio.CancelledError
    if decision == TIMEOUT:
        await asyncio.sleep(faults.timeout_s)
        if faults.timeout_action == "drop":
            _drop(request)
            raise asyncio.CancelledError
        return problem_response(Problem(504, "timeout", "Upstream timed out"), request.path)
    if decision == RATE_LIMITED:
        return problem_response(
            Problem(429, "rate_limit_exceeded", "Rate limit exceeded (injected)"),
            request.path,
            {"Retry-After": retry_after_header(retry)} if retry else None,
        )
    if decision == OUTAGE:
        return problem_response(
            Problem(503, "service_error", f"{tool} is unavailable (outage)"),
            request.path,
            {"Retry-After": retry_after_header(retry)},
        )
    assert decision == ERROR
    return problem_response(
        Problem(status, _ERROR_CODES.get(status, "internal_error"), "Injected server error"),
        request.path,
    )


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def make_handler(sb: Sandbox, route: Route) -> Any:
    tool = route.tool
    counters = sb.counters
    admin_only = tool in ADMIN_TOOLS
    need = TIER_RANK[required_tier(tool)]
    spec = route.body
    paid = tool in ("best_match", "create_intent", "create_escrow")

    def begin() -> tuple[float, Faults, float]:
        """Count the call and draw its latency: (now, the fault config, seconds to wait)."""
        now = time.time()
        counters.total += 1
        counters.tools[tool] += 1
        counters.in_flight += 1
        faults = sb.faults
        return now, faults, faults.delay_s(tool) if faults.has_latency else 0.0

    async def handle(request: web.Request) -> web.StreamResponse:
        now, faults, delay = begin()
        if delay > 0:
            try:
                await asyncio.sleep(delay)
            except BaseException:
                counters.in_flight -= 1
                raise
        return await finish(request, now, faults)

    async def finish(request: web.Request, now: float, faults: Faults) -> web.StreamResponse:
        """The call after its latency (``begin`` counted it)."""
        try:
            faulted = await _faulted(sb, faults, request, tool, now)
            if faulted is not None:
                return faulted
            response = await _pipeline(request, now)
        except Problem as exc:
            response = problem_response(exc, request.path)
            if exc.close and sb.options.close_after_error:
                response.force_close()
        finally:
            counters.in_flight -= 1
        counters.statuses[tool][str(response.status)] += 1
        if request.get("drop_after_commit"):
            _drop(request)
            raise asyncio.CancelledError
        return response

    async def _pipeline(request: web.Request, now: float) -> web.Response:
        st = sb.state
        raw: Any = None
        if not route.auth:
            raw = await _read_json_or_400(request)
            call = Call(
                st, now, None, "", "free", raw, request.query, request.match_info, Decimal(0), sb
            )
            result = await route.handler(call)
            return web.Response(body=orjson.dumps(result), status=route.status, content_type=JSON)
        token = _token(request)
        if token is None:
            raise Problem(401, "missing_key", "Missing API key")
        key, why = st.key_for(token, now, sb.key_grace_s)
        if key is None:
            raise Problem(401, "authentication_error", why)
        caller = key.agent_id
        counters.agents[caller][tool] += 1
        is_admin = key.admin
        tier = "admin" if is_admin else key.tier
        if admin_only and not is_admin:
            if tool in ADMIN_ROUTER_TOOLS:
                raise Problem(403, "forbidden_admin_only", "This route requires admin privileges")
            raise Problem(403, "admin_only", f"Tool '{tool}' requires admin privileges")
        count = 0
        if not is_admin:
            if TIER_RANK[tier] < need:
                raise Problem(
                    403,
                    "insufficient_tier",
                    f"Tier '{tier}' cannot access tool '{tool}' (requires '{required_tier(tool)}')",
                )
            count = sb.rate(caller, tier, tool, now)
        if spec is not None or paid:
            raw = await _read_json(request)
        cost = tool_cost(tool, raw) if paid else Decimal(0)
        wallet = st.wallets.get(caller)
        if not is_admin and (cost or (isinstance(raw, dict) and raw.get("amount"))):
            balance = wallet.balance if wallet is not None else Decimal(0)
            if cost and balance < cost:
                raise Problem(
                    402,
                    "insufficient_balance",
                    f"Insufficient balance: {float(balance)} < {float(cost)} credits required",
                )
            if wallet is not None:
                _check_budget(st, wallet, cost, now)
        body = check_body(spec, raw, route.aliases) if spec is not None else {}
        idem = request.headers.get("Idempotency-Key") if route.idempotency else None
        idem_id = ""
        fingerprint = ""
        if idem:
            idem_id = f"{caller}\x00{tool}\x00{idem}"
            fingerprint = hashlib.sha256(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)).hexdigest()
            cached = st.idempotency.get(idem_id)
            if cached is not None:
                checked = route.idempotency == "checked"
                if checked and cached["fingerprint"] != fingerprint:
                    raise Problem(
                        409,
                        "idempotency_key_reused",
                        "Idempotency-Key was already used with a different request body",
                    )
                headers = {} if checked else {"X-Charged": f"{cost:.2f}"}
                if not is_admin:
                    headers.update(rate_headers(RATE_LIMITS[tier], count, now))
                return web.Response(
                    body=cached["body"].encode(),
                    status=cached["status"],
                    content_type=JSON,
                    headers=headers,
                )
        call = Call(st, now, key, caller, tier, body, request.query, request.match_info, cost, sb)
        result = await route.handler(call)
        if wallet is not None:
            st.charge(wallet, cost, tool, now)
        payload = orjson.dumps(serialize(result))
        if idem:
            st.idempotency[idem_id] = {
                "fingerprint": fingerprint,
                "status": route.status,
                "body": payload.decode(),
                "at": now,
            }
            st.touch("idempotency", idem_id)
        headers = {"X-Charged": f"{cost:.2f}"}
        if not is_admin:
            headers.update(rate_headers(RATE_LIMITS[tier], count, now))
        if call.location:
            headers["Location"] = call.location
        return web.Response(body=payload, status=route.status, content_type=JSON, headers=headers)

    # The lean front waits out the latency on a timer rather than a sleeping task.
    handle.fast = (begin, finish)  # type: ignore[attr-defined]
    return handle


async def _read_json_or_400(request: web.Request) -> Any:
    try:
        return await _read_json(request)
    except Problem:
        raise Problem(400, "bad_request", "Invalid request body") from None


def _check_budget(st: State, wallet: Any, pending: Decimal, now: float) -> None:
    for cap, since, label in (
        (wallet.daily_cap, now - 86400, "Daily"),
        (wallet.monthly_cap, now - 30 * 86400, "Monthly"),
    ):
        if cap is None:
            continue
        spent = st.spent_since(wallet, since)
        if spent + pending > cap:
            raise Problem(
                402,
                "budget_exceeded",
                f"{label} budget cap exceeded: spent {spent:.2f} + pending {pending:.2f} "
                f"> cap {cap:.2f} credits.",
            )


# --- routes outside the tool pipeline ------------------------------------------------------


def _public_headers(sb: Sandbox, request: web.Request, now: float) -> dict[str, str]:
    ip = request.remote or "?"
    window = sb.ip_window[ip]
    window.append(now)
    horizon = now - HOUR
    while window and window[0] < horizon:
        window.pop(0)
    if len(window) > PUBLIC_LIMIT:
        raise Problem(
            429, "rate_limit_exceeded", f"Rate limit exceeded: {len(window)}/1000 per hour"
        )
    return rate_headers(PUBLIC_LIMIT, len(window), now)


def health_handler(sb: Sandbox) -> Any:
    databases = dict.fromkeys(
        (
            "billing",
            "paywall",
            "payments",
            "marketplace",
            "trust",
            "identity",
            "event_bus",
            "webhooks",
            "messaging",
            "disputes",
        ),
        "ok",
    )

    async def health(request: web.Request) -> web.Response:
        now = time.time()
        sb.counters.tools["health"] += 1
        try:
            headers = _public_headers(sb, request, now)
        except Problem as exc:
            return problem_response(exc, request.path)
        body = {
            "status": "ok",
            "version": VERSION,
            "tools": 137,
            "db": "ok",
            "databases": databases,
            "docs_url": "/docs",
        }
        return web.Response(body=orjson.dumps(body), content_type=JSON, headers=headers)

    return health


async def execute_gone(request: web.Request) -> web.Response:
    exc = Problem(
        410,
        "endpoint_removed",
        "POST /v1/execute has been removed. Use the dedicated REST endpoints under "
        "/v1/<domain>/<operation> instead. See /docs for the migration guide.",
    )
    return problem_response(
        exc,
        request.path,
        {
            "Deprecation": "true",
            "Sunset": "Thu, 01 Oct 2026 00:00:00 GMT",
            "Link": '</docs/api-reference.md#deprecation-v1-execute>; rel="sunset"; '
            'type="text/markdown"',
        },
    )


def rotate_guard(sb: Sandbox, inner: Any) -> Any:
    """428 (plain JSON, as the real one) without the confirmation header, after the key checks."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("X-Rotate-Confirmation", "").lower() != "confirm":
            token = _token(request)
            key, _ = (
                (None, "")
                if token is None
                else sb.state.key_for(token, time.time(), sb.key_grace_s)
            )
            if key is not None and key.admin:
                exc = Problem(
                    428,
                    "rotate_confirmation_required",
                    "Key rotation is a destructive action. Include the header "
                    "'X-Rotate-Confirmation: confirm' to proceed. The old key remains valid "
                    f"for a {int(sb.key_grace_s)}s grace window after a successful rotation.",
                )
                body = exc.body(request.path)
                body["title"] = "Rotate confirmation required"
                return web.Response(body=orjson.dumps(body), status=428, content_type=JSON)
        response: web.StreamResponse = await inner(request)
        return response

    return handle


def stream_handler(sb: Sandbox) -> Any:
    """``GET /v1/events/stream`` as the real one (routes/sse.py) serves it.

    Any valid key, no rate accounting. ``Last-Event-ID`` overrides ``since_id``
    (one that is not an integer is ignored). Every ``--sse-poll-s`` (1 s) it reads
    at most ``--sse-batch`` (100) events of the ``event_type`` after the cursor,
    sends those whose source is ``agent_id``, and advances past all it read: one
    stream carries at most 100 events/s on the real gateway. ``: heartbeat``
    every 5 s; closed after ``--sse-lifetime-s`` (3600). ``--sse-poll-s 0`` wakes
    on every publish instead (benchmarks).
    """
    from sandbox.routes import events_after

    async def stream(request: web.Request) -> web.StreamResponse:
        sb.counters.tools["stream_events"] += 1
        token = _token(request)
        if token is None:
            return problem_response(Problem(401, "missing_key", "Missing API key"), request.path)
        key, _ = sb.state.key_for(token, time.time(), sb.key_grace_s)
        if key is None:
            return problem_response(Problem(401, "invalid_key", "Invalid API key"), request.path)
        q = request.query
        try:
            since = int(q.get("since_id") or 0)
        except ValueError:
            return problem_response(
                Problem(422, "validation_error", "query.since_id: Input should be a valid integer"),
                request.path,
            )
        with contextlib.suppress(KeyError, ValueError):
            since = int(request.headers["Last-Event-ID"])
        event_type = q.get("event_type") or None
        source = q.get("agent_id") or None
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        started = last_beat = time.monotonic()
        options = sb.options
        lifetime, beat = options.sse_lifetime_s, options.sse_heartbeat_s
        poll, batch = options.sse_poll_s, options.sse_batch
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            while time.monotonic() - started < lifetime:
                sb.state.expire_events(time.time())
                events, since = events_after(sb.state, since, event_type, source, batch)
                for event in events:
                    await response.write(
                        b"id: %d\ndata: %s\n\n" % (event["id"], orjson.dumps(event))
                    )
                now = time.monotonic()
                if now - last_beat >= beat:
                    await response.write(b": heartbeat\n\n")
                    last_beat = now
                left = lifetime - (now - started)
                if poll > 0:
                    await asyncio.sleep(max(0.0, min(poll, left)))
                elif len(events) < batch:
                    wait = min(beat - (now - last_beat), left, 1.0)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(sb.changed.wait(), max(0.01, wait))
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    return stream


# --- the app ----------------------------------------------------------------------------


def create_app(options: SandboxOptions) -> web.Application:
    from sandbox.control import add_control_routes

    app = web.Application(client_max_size=1 << 20)
    sb = Sandbox(options)
    app["sandbox"] = sb
    fast = Router()
    app["fast_router"] = fast
    app.router.add_get("/v1/health", health_handler(sb))
    app.router.add_route("*", "/v1/execute", execute_gone)
    app.router.add_get("/v1/events/stream", stream_handler(sb))
    for path in ("/v1/health", "/v1/execute", "/v1/events/stream"):
        fast.add(path, None)
    for route in ROUTES:
        handler = make_handler(sb, route)
        if route.tool == "rotate_key":
            handler = rotate_guard(sb, handler)
        app.router.add_route(route.method, route.path, handler)
        if route.method == "GET":
            fast.add(route.path, handler.fast)
    add_control_routes(app, sb)
    from sandbox.a2a import add_a2a_routes

    add_a2a_routes(app, sb)
    app.middlewares.append(_problem_middleware)

    async def flusher(app: web.Application) -> Any:
        async def loop() -> None:
            while True:
                await asyncio.sleep(options.flush_interval_s)
                upserts, deletes, events = sb.store.take()
                if upserts or deletes or events:
                    await asyncio.to_thread(sb.store.write, upserts, deletes, events)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sb.store.close()

    async def heartbeats(app: web.Application) -> Any:
        """The simulated agents' runtimes: each beats in its slot of the interval."""

        async def loop() -> None:
            runtimes = sb.runtimes
            runtimes.due(time.time())
            period = min(1.0, runtimes.interval_s / 10)
            while True:
                await asyncio.sleep(period)
                if runtimes.beat_due(time.time()):
                    sb.notify()

        task = asyncio.create_task(loop()) if options.heartbeat_interval_s > 0 else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(flusher)
    app.cleanup_ctx.append(heartbeats)
    return app


@web.middleware
async def _problem_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Unknown paths and methods as the real one answers them: problem+json 404/405."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        problem = Problem(exc.status, "http_error", exc.reason)
        return problem_response(problem, request.path)


def run(options: SandboxOptions) -> None:
    """Serve until SIGINT/SIGTERM; prints ``sandbox listening on URL`` when ready."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(options))


async def _serve(options: SandboxOptions) -> None:
    app = create_app(options)
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("aiohttp.access") if options.access_log else None,
        handle_signals=False,
        keepalive_timeout=KEEPALIVE_S,
    )
    await runner.setup()
    fallback = runner.server
    assert fallback is not None
    router: Router = app["fast_router"]
    live: set[FastProtocol] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: FastProtocol(router, fallback, live),
        options.host,
        options.port,
        backlog=1024,
        reuse_address=True,
    )
    port = server.sockets[0].getsockname()[1]
    print(f"sandbox listening on http://{options.host}:{port}", flush=True)

    async def reap_idle() -> None:
        while True:
            await asyncio.sleep(5.0)
            now = time.monotonic()
            for protocol in list(live):
                protocol.close_if_idle(now, KEEPALIVE_S)

    reaper = asyncio.create_task(reap_idle())
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    reaper.cancel()
    server.close()
    close_all(live)
    await runner.cleanup()
