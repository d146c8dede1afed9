"""The HTTP server: the tool endpoint, fault injection, counters and the admin API.

One aiohttp application. ``POST {tool_path}`` carries every tool call;
``/_sandbox/...`` is the admin API (fleet-admin key only, never faulted, never
counted as tool calls). The per-request path is kept short on purpose: orjson
in and out, dict lookups, no logging, no middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from sandbox.behaviour import PROFILE_IDS, PROFILE_NAMES, ProfileMix
from sandbox.faults import (
    DROP,
    DROP_AFTER_COMMIT,
    ERROR,
    OUTAGE,
    PASS,
    RATE_LIMITED,
    TIMEOUT,
    FaultConfigError,
    Faults,
    retry_after_header,
)
from sandbox.state import TIERS, Clock, SandboxState
from sandbox.tools import TOOLS
from sandbox.validate import AGENT_ID_RE, ToolError, iso, parse_money

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger("sandbox")

UNKNOWN_TOOL = "<unknown>"
INVALID_CALL = "<invalid>"
JSON = "application/json"
ADMIN_FALLBACK = "/_sandbox/{tail}"
# /_sandbox/seed lists the new ids up to this many (a load test needs them).
SEED_IDS_LISTED = 20000
_ERROR_CODES = {500: "internal_error", 502: "bad_gateway", 503: "unavailable", 504: "timeout"}


@dataclass
class SandboxOptions:
    """Everything the sandbox is started with (CLI flags map one to one)."""

    host: str = "127.0.0.1"
    port: int = 8765
    agents: int = 0
    seed: int = 42
    latency_ms: float = 50.0
    latency_jitter_ms: float = 10.0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_s: float = 30.0
    admin_key: str = "sandbox-admin-key"
    tool_path: str = "/v1"
    key_overlap_s: float = 60.0
    treasury_wallet: str = "fleet-treasury"
    seed_prefix: str = "sim"
    profile_mix: str | None = None
    rate_limit: int = 6000
    rate_window_s: float = 60.0
    # A full fault document applied after the flags above (see sandbox.faults).
    faults: dict[str, Any] | None = None
    access_log: bool = False
    # Template name → terms; None means the project's policy file.
    sla_templates: dict[str, dict[str, Any]] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SandboxOptions:
        sb = settings.sandbox
        policy = settings.policy
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
            "tool_path": settings.gateway.tool_path,
            "key_overlap_s": policy.provisioning.key_overlap_s,
            "treasury_wallet": policy.provisioning.treasury_wallet,
            "sla_templates": templates_from_policy(settings),
        }
        values.update(overrides)
        return cls(**values)


def templates_from_policy(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """SLA templates as create_sla terms: money as strings, percentages as numbers."""
    if settings is None:
        from config.policy import load_policy
        from config.settings import DEFAULT_POLICY_FILE

        policy = load_policy(DEFAULT_POLICY_FILE)
    else:
        policy = settings.policy
    return {
        name: {
            "p99_latency_ms": float(t.p99_latency_ms),
            "uptime_pct": float(t.uptime_pct),
            "accuracy_pct": float(t.accuracy_pct),
            "max_cost_per_task": format(t.max_cost_per_task, "f"),
            "review_days": t.review_days,
        }
        for name, t in policy.sla_templates.items()
    }


class Counters:
    """Calls per tool, per agent per tool and per (tool, status); all requests count."""

    def __init__(self) -> None:
        self.total = 0
        self.tools: defaultdict[str, int] = defaultdict(int)
        self.agents: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.statuses: defaultdict[str, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )
        self.in_flight = 0
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
    """The running sandbox: options, clock, state, faults and counters."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.admin_key = options.admin_key
        self._admin_key_bytes = options.admin_key.encode("utf-8", "surrogateescape")
        self.clock = Clock()
        self.mix = ProfileMix.parse(options.profile_mix) if options.profile_mix else ProfileMix()
        self.templates = (
            options.sla_templates if options.sla_templates is not None else templates_from_policy()
        )
        self.started = time.monotonic()
        self.faults = self._startup_faults()
        self.counters = Counters()
        self.state = self._new_state()
        if options.agents:
            self.state.seed_agents(options.agents, options.seed_prefix)

    def _new_state(self) -> SandboxState:
        o = self.options
        return SandboxState(
            seed=o.seed,
            clock=self.clock,
            mix=self.mix,
            key_overlap_s=o.key_overlap_s,
            treasury_wallet=o.treasury_wallet,
            sla_templates=self.templates,
            rate_limit=o.rate_limit,
            rate_window_s=o.rate_window_s,
        )

    def _startup_faults(self) -> Faults:
        o = self.options
        faults = Faults(o.seed, TOOLS)
        faults.apply(
            {
                "latency_ms": o.latency_ms,
                "latency_jitter_ms": o.latency_jitter_ms,
                "timeout_s": o.timeout_s,
                "error_rate": o.error_rate,
                "timeout_rate": o.timeout_rate,
            },
            self.clock.now(),
        )
        if o.faults:
            faults.apply(o.faults, self.clock.now())
        return faults

    def reset(self, agents: int = 0) -> None:
        self.state = self._new_state()
        self.faults = self._startup_faults()
        self.counters = Counters()
        if agents:
            self.state.seed_agents(agents, self.options.seed_prefix)

    # --- the tool endpoint ---------------------------------------------------------

    async def handle_tool(self, request: web.Request) -> web.StreamResponse:
        counters = self.counters
        counters.total += 1
        counters.in_flight += 1
        tool_key = INVALID_CALL
        status = "dropped"
        try:
            body = await request.read()
            try:
                call = orjson.loads(body)
            except orjson.JSONDecodeError:
                call = None
            if not isinstance(call, dict):
                counters.tools[tool_key] += 1
                status = "400"
                return _error(
                    400, "invalid_json", 'body must be a JSON object {"tool": NAME, "input": {...}}'
                )
            tool = call.get("tool")
            inp = call.get("input")
            if inp is None:
                inp = {}
            if isinstance(tool, str) and tool in TOOLS:
                tool_key = tool
            elif isinstance(tool, str):
                tool_key = UNKNOWN_TOOL
            counters.tools[tool_key] += 1
            if isinstance(inp, dict):
                subject = inp.get("agent_id") or inp.get("from_agent_id")
                if isinstance(subject, str) and len(subject) <= 128:
                    counters.agents[subject][tool_key] += 1
            response = await self._answer(request, tool_key, tool, inp)
            status = "dropped" if response is None else str(response.status)
            if response is None:
                _drop(request)
                return web.Response(status=499)  # never sent: the transport is gone
            return response
        finally:
            counters.in_flight -= 1
            counters.statuses[tool_key][status] += 1

    async def _answer(
        self, request: web.Request, tool_key: str, tool: Any, inp: Any
    ) -> web.Response | None:
        """The response for one call, or None to drop the connection unanswered."""
        faults = self.faults
        # The kill switch models an unreachable gateway: nothing is checked first.
        if faults.killed(tool_key):
            return None
        if faults.has_latency:
            await asyncio.sleep(faults.delay_s(tool_key))
        auth = request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not key:
            return _error(401, "unauthorized", "missing Authorization: Bearer <key>")
        state = self.state
        now = state.now()
        caller = None
        if not self._is_admin(key):
            caller = state.agent_for_key(key, now)
            if caller is None:
                return _error(401, "unauthorized", "unknown, revoked or expired API key")
        state.count_call(now)

        decision, status, retry_after = faults.decide(tool_key, now)
        if decision != PASS:
            if decision == RATE_LIMITED:
                return _error(
                    429, "rate_limited", "rate limit exceeded; retry later", retry_after=retry_after
                )
            if decision == OUTAGE:
                return _error(
                    503, "outage", f"{tool_key} is unavailable (outage)", retry_after=retry_after
                )
            if decision == TIMEOUT:
                await asyncio.sleep(faults.timeout_s)
                if faults.timeout_action == "drop":
                    return None
                return _error(504, "timeout", "the gateway timed out")
            if decision == DROP:
                return None
            if decision == ERROR:
                return _error(status, _ERROR_CODES[status], f"injected failure ({status})")

        if tool_key == INVALID_CALL:
            return _error(
                400, "invalid_input", "tool: must be a string naming the tool", field="tool"
            )
        if tool_key == UNKNOWN_TOOL:
            return _error(404, "unknown_tool", f"no tool named {str(tool)[:64]!r}", field="tool")
        if not isinstance(inp, dict):
            return _error(400, "invalid_input", "input: must be a JSON object", field="input")
        try:
            result = TOOLS[tool_key](state, inp, caller, now)
        except ToolError as exc:
            return _error(
                exc.status, exc.code, exc.message, field=exc.field, retry_after=exc.retry_after
            )
        except Exception:  # a bug of ours must not take the server down
            log.exception("tool %s failed", tool_key)
            return _error(500, "internal_error", f"{tool_key} failed inside the sandbox")
        if decision == DROP_AFTER_COMMIT:
            return None
        return web.Response(body=orjson.dumps(result), content_type=JSON)

    # --- the admin API -------------------------------------------------------------

    def _is_admin(self, key: str) -> bool:
        # Bytes, because compare_digest refuses non-ASCII str (a junk header is a 401, not a 500).
        return secrets.compare_digest(key.encode("utf-8", "surrogateescape"), self._admin_key_bytes)

    def _admin(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not key or not self._is_admin(key):
            raise AdminError(401, "unauthorized", "the admin API needs the fleet-admin key")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise AdminError(400, "invalid_json", "body must be JSON") from None
        if not isinstance(body, dict):
            raise AdminError(400, "invalid_json", "body must be a JSON object")
        return body

    async def admin(self, request: web.Request) -> web.Response:
        """Dispatch /_sandbox/... after checking the admin key."""
        try:
            self._admin(request)
            route = (
                request.match_info.route.resource.canonical
                if request.match_info.route.resource
                else ""
            )
            handler = self._admin_routes.get((request.method, route))
            if handler is None:
                if route == ADMIN_FALLBACK:
                    raise AdminError(404, "not_found", f"no admin endpoint {request.path}")
                raise AdminError(
                    405,
                    "method_not_allowed",
                    f"{request.method} is not supported on {request.path}",
                )
            return _json(200, await handler(self, request))
        except AdminError as exc:
            return _error(exc.status, exc.code, exc.message, field=exc.field)
        except ToolError as exc:
            return _error(exc.status, exc.code, exc.message, field=exc.field)

    async def a_health(self, request: web.Request) -> dict[str, Any]:
        return {
            "status": "ok",
            "now": iso(self.clock.now()),
            "clock_offset_s": self.clock.offset,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "agents": len(self.state.agents),
            "seed": self.options.seed,
            "tool_path": self.options.tool_path,
            "tools": len(TOOLS),
        }

    async def a_counters(self, request: web.Request) -> dict[str, Any]:
        with_agents = request.query.get("agents", "1").lower() not in ("0", "false", "no")
        return self.counters.view(with_agents, request.query.get("agent_prefix", ""))

    async def a_counters_reset(self, request: web.Request) -> dict[str, Any]:
        self.counters = Counters()
        return {"reset": True}

    async def a_faults_get(self, request: web.Request) -> dict[str, Any]:
        return self.faults.view(self.clock.now())

    async def a_faults_put(self, request: web.Request) -> dict[str, Any]:
        body = await self._body(request)
        try:
            self.faults.apply(body, self.clock.now())
        except FaultConfigError as exc:
            raise AdminError(400, "invalid_faults", str(exc), field=exc.field) from None
        return self.faults.view(self.clock.now())

    async def a_faults_delete(self, request: web.Request) -> dict[str, Any]:
        self.faults.clear()
        return self.faults.view(self.clock.now())

    async def a_clock(self, request: web.Request) -> dict[str, Any]:
        now = self.clock.now()
        return {"now": iso(now), "epoch": now, "offset_s": self.clock.offset}

    async def a_clock_advance(self, request: web.Request) -> dict[str, Any]:
        body = await self._body(request)
        seconds = body.get("seconds")
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 <= seconds <= 10 * 365 * 86400
        ):
            raise AdminError(
                400,
                "invalid_input",
                "seconds: must be a number between 0 and ten years",
                field="seconds",
            )
        self.clock.advance(float(seconds))
        return await self.a_clock(request)

    async def a_seed(self, request: web.Request) -> dict[str, Any]:
        body = await self._body(request)
        count = body.get("agents", 0)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 1_000_000:
            raise AdminError(
                400, "invalid_input", "agents: must be an integer 0..1000000", field="agents"
            )
        prefix = body.get("prefix", self.options.seed_prefix)
        if not isinstance(prefix, str) or not AGENT_ID_RE.match(prefix) or len(prefix) > 64:
            raise AdminError(
                400, "invalid_input", "prefix: must be a short id-safe string", field="prefix"
            )
        tier = body.get("tier", "starter")
        if tier not in TIERS:
            raise AdminError(
                400, "invalid_input", f"tier: must be one of {', '.join(TIERS)}", field="tier"
            )
        balance = parse_money("balance", body.get("balance", "100.00"))
        template = body.get("sla_template", "standard-support")
        if template is not None and template not in self.templates:
            raise AdminError(
                400,
                "invalid_input",
                f"sla_template: must be one of {', '.join(self.templates)} or null",
                field="sla_template",
            )
        profile = _profile(body.get("profile"))
        services = body.get("services", True)
        if not isinstance(services, bool):
            raise AdminError(
                400, "invalid_input", "services: must be true or false", field="services"
            )
        started = time.perf_counter()
        made = self.state.seed_agents(
            count,
            prefix,
            tier=tier,
            balance=balance,
            sla_template=template,
            profile=profile,
            services=services,
        )
        return {
            "seeded": len(made),
            "first": made[0] if made else None,
            "last": made[-1] if made else None,
            "agent_ids": made if len(made) <= SEED_IDS_LISTED else None,
            "elapsed_s": round(time.perf_counter() - started, 3),
        }

    async def a_state(self, request: web.Request) -> dict[str, Any]:
        return self.state.summary()

    async def a_agent_get(self, request: web.Request) -> dict[str, Any]:
        agent_id = request.match_info["agent_id"]
        state = self.state
        agent = state.agents.get(agent_id) or state.retired.get(agent_id)
        if agent is None:
            raise AdminError(404, "agent_not_found", f"agent {agent_id!r} was never registered")
        return state.agent_view(agent)

    async def a_agent_put(self, request: web.Request) -> dict[str, Any]:
        agent_id = request.match_info["agent_id"]
        body = await self._body(request)
        agent = self.state.agents.get(agent_id)
        if agent is None:
            raise AdminError(404, "agent_not_found", f"agent {agent_id!r} is not registered")
        profile = _profile(body.get("profile"))
        if profile is None:
            raise AdminError(400, "invalid_input", "profile: required", field="profile")
        self.state.set_profile(agent, profile, self.clock.now())
        return self.state.agent_view(agent)

    async def a_messages(self, request: web.Request) -> dict[str, Any]:
        to = request.query.get("to")
        sender = request.query.get("from")
        try:
            limit = max(1, min(1000, int(request.query.get("limit", "100"))))
        except ValueError:
            raise AdminError(
                400, "invalid_input", "limit: must be an integer", field="limit"
            ) from None
        found = [
            m.view()
            for m in self.state.messages
            if (to is None or m.to == to) and (sender is None or m.sender == sender)
        ]
        return {"messages": found[-limit:], "count": len(found)}

    async def a_reset(self, request: web.Request) -> dict[str, Any]:
        body = await self._body(request)
        agents = body.get("agents", 0)
        if isinstance(agents, bool) or not isinstance(agents, int) or not 0 <= agents <= 1_000_000:
            raise AdminError(
                400, "invalid_input", "agents: must be an integer 0..1000000", field="agents"
            )
        self.reset(agents)
        return {"reset": True, "agents": len(self.state.agents)}

    async def a_tools(self, request: web.Request) -> dict[str, Any]:
        return {"tools": sorted(TOOLS), "profiles": list(PROFILE_NAMES)}

    _admin_routes: Mapping[tuple[str, str], Any] = {
        ("GET", "/_sandbox/health"): a_health,
        ("GET", "/_sandbox/counters"): a_counters,
        ("POST", "/_sandbox/counters/reset"): a_counters_reset,
        ("GET", "/_sandbox/faults"): a_faults_get,
        ("PUT", "/_sandbox/faults"): a_faults_put,
        ("DELETE", "/_sandbox/faults"): a_faults_delete,
        ("GET", "/_sandbox/clock"): a_clock,
        ("POST", "/_sandbox/clock/advance"): a_clock_advance,
        ("POST", "/_sandbox/seed"): a_seed,
        ("GET", "/_sandbox/state"): a_state,
        ("GET", "/_sandbox/agents/{agent_id}"): a_agent_get,
        ("PUT", "/_sandbox/agents/{agent_id}"): a_agent_put,
        ("GET", "/_sandbox/messages"): a_messages,
        ("POST", "/_sandbox/reset"): a_reset,
        ("GET", "/_sandbox/tools"): a_tools,
    }


class AdminError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def _profile(value: Any) -> int | None:
    if value is None:
        return None
    if value not in PROFILE_IDS:
        raise AdminError(
            400,
            "invalid_input",
            f"profile: must be one of {', '.join(PROFILE_NAMES)}",
            field="profile",
        )
    return PROFILE_IDS[value]


def _json(status: int, body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON)


def _error(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    retry_after: float | None = None,
) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    response = web.Response(body=orjson.dumps({"error": error}), status=status, content_type=JSON)
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after_header(retry_after)
    return response


def _drop(request: web.Request) -> None:
    """Close the connection without a byte of response (what a dead gateway does)."""
    transport = request.transport
    if transport is not None:
        transport.close()


SANDBOX_KEY: web.AppKey[Sandbox] = web.AppKey("sandbox", Sandbox)


def create_app(options: SandboxOptions | None = None) -> web.Application:
    """The aiohttp application (state seeded); serve it with ``run`` or any aiohttp runner."""
    options = options or SandboxOptions()
    sandbox = Sandbox(options)
    app = web.Application(client_max_size=1024 * 1024)
    app[SANDBOX_KEY] = sandbox
    tool_path = options.tool_path.rstrip("/") or "/"
    app.router.add_post(tool_path, sandbox.handle_tool)
    seen: set[str] = set()
    for method, path in Sandbox._admin_routes:
        if path not in seen:
            seen.add(path)
            app.router.add_route("*", path, sandbox.admin)
    app.router.add_route("*", "/_sandbox/{tail:.*}", sandbox.admin)
    return app


@dataclass
class _Running:
    runner: web.AppRunner
    url: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def start(options: SandboxOptions) -> _Running:
    app = create_app(options)
    runner = web.AppRunner(
        app,
        access_log=log if options.access_log else None,
        handle_signals=False,
        # Requests held by timeout faults must not stall shutdown.
        shutdown_timeout=1.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, options.host, options.port, backlog=2048, reuse_address=True)
    await site.start()
    port = options.port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            port = address[1]
            break
    return _Running(runner, f"http://{options.host}:{port}")


async def serve(options: SandboxOptions) -> None:
    """Serve until SIGINT or SIGTERM."""
    running = await start(options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, running.stop.set)
    print(f"sandbox listening on {running.url}", flush=True)
    try:
        await running.stop.wait()
    finally:
        await running.runner.cleanup()


def run(options: SandboxOptions | None = None) -> None:
    """Run the sandbox in this process until SIGINT/SIGTERM (uvloop when available)."""
    options = options or SandboxOptions()
    if options.access_log:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(options))
