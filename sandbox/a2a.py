"""Each simulated agent as an A2A server (protocol 0.3, JSON-RPC binding).

    GET  /a2a/{agent_id}/.well-known/agent-card.json   the agent card, naming the endpoint
    POST /a2a/{agent_id}       JSON-RPC: message/send, tasks/get, tasks/cancel

What an agent does with a task follows its behaviour profile (sandbox/behaviour.py) at the
moment the task arrives: it answers after its p50 latency (or the sandbox's configured
latency, when one is set), spends its cost per task, and fails at its error rate: half of
the failures before any work (no usage, nothing spent), half after it (usage reported, the
cost spent). A ``dead`` agent fails every task before any work. The cost is charged to the
agent's wallet like its other spending.

A message whose ``configuration.blocking`` is false is answered at once with the task
``submitted``; it moves to ``working`` and then to its final state in the background, and
``tasks/get`` reads it. The caller's ``traceparent`` header is kept in the task's metadata.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sandbox.behaviour import DEAD, metrics_at

if TYPE_CHECKING:
    from sandbox.server import Sandbox

PROTOCOL_VERSION = "0.3.0"
TERMINAL = frozenset({"completed", "failed", "canceled", "rejected"})
TASKS_KEPT = 50_000
# JSON-RPC and A2A error codes (A2A 0.3 §8).
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
TASK_NOT_FOUND, TASK_NOT_CANCELABLE = -32001, -32002


class A2AAgents:
    """The tasks the simulated agents hold, and their decisions."""

    def __init__(self, sb: Sandbox, seed: int) -> None:
        self.sb = sb
        self.rng = random.Random(seed + 7)
        self.tasks: dict[str, dict[str, Any]] = {}
        self.received: dict[str, int] = {}
        # Set by the control API: every agent takes this long (ms) for a task.
        self.work_ms: float | None = None

    def card(self, agent_id: str, base: str) -> dict[str, Any]:
        return {
            "name": agent_id,
            "description": f"simulated agent {agent_id}",
            "url": f"{base}/a2a/{agent_id}",
            "version": "1.0.0",
            "protocolVersion": PROTOCOL_VERSION,
            "preferredTransport": "JSONRPC",
            "capabilities": {"streaming": False, "pushNotifications": False},
            "defaultInputModes": ["text/plain"],
            "defaultOutputModes": ["text/plain"],
            "skills": [
                {
                    "id": "work",
                    "name": "work",
                    "description": "does the task it is sent",
                    "tags": ["support"],
                }
            ],
        }

    def plan(self, agent_id: str, message: dict[str, Any], now: float) -> dict[str, Any]:
        """What this agent will do with this task: delay, outcome, usage, cost."""
        agent = self.sb.state.agents[agent_id]
        meta = message.get("metadata") or {}
        estimated = int(meta.get("estimated_tokens") or 500)
        faults = self.sb.faults
        if agent.profile == DEAD:
            return {"delay_s": 0.0, "state": "failed", "spent": False, "why": "agent is down"}
        m = metrics_at(agent.profile, agent.hash, agent.params(), now, agent.origin)
        if self.work_ms is not None:
            delay = self.work_ms / 1000.0
        elif faults.latency_ms > 0:
            delay = faults.delay_s("a2a")
        else:
            delay = m.latency_p50 / 1000.0
        draw = self.rng.random()
        if draw < m.error_rate / 2:
            return {"delay_s": delay, "state": "failed", "spent": False, "why": "refused the task"}
        input_tokens = max(1, estimated)
        output_tokens = max(1, int(estimated * (0.5 + self.rng.random())))
        # Wallets hold cents: a task costs at least one.
        raw = Decimal(str(m.cost_per_task * (input_tokens + output_tokens) / 1000))
        cost = max(Decimal("0.01"), raw.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
        failed = draw < m.error_rate
        return {
            "delay_s": delay,
            "state": "failed" if failed else "completed",
            "spent": True,
            "why": "failed during the work" if failed else "done",
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
            "cost": str(cost),
        }

    def charge(self, agent_id: str, cost: str, now: float) -> None:
        wallet = self.sb.state.wallets.get(agent_id)
        if wallet is not None and Decimal(cost) > 0:
            self.sb.state.charge(wallet, Decimal(cost), "a2a_task", now)

    def new_task(
        self, agent_id: str, message: dict[str, Any], traceparent: str | None
    ) -> dict[str, Any]:
        task_id = uuid.uuid4().hex
        context_id = message.get("contextId") or uuid.uuid4().hex
        meta: dict[str, Any] = {"agent_id": agent_id}
        if traceparent:
            meta["traceparent"] = traceparent
        task = {
            "kind": "task",
            "id": task_id,
            "contextId": context_id,
            "status": {"state": "submitted", "timestamp": _iso(time.time())},
            "history": [message],
            "metadata": meta,
        }
        if len(self.tasks) >= TASKS_KEPT:
            for old in list(self.tasks)[: TASKS_KEPT // 10]:
                del self.tasks[old]
        self.tasks[task_id] = task
        self.received[agent_id] = self.received.get(agent_id, 0) + 1
        return task

    def finish(self, agent_id: str, task: dict[str, Any], plan: dict[str, Any]) -> None:
        if task["status"]["state"] in TERMINAL:
            return  # canceled meanwhile
        now = time.time()
        task["status"] = {
            "state": plan["state"],
            "timestamp": _iso(now),
            "message": {
                "kind": "message",
                "role": "agent",
                "messageId": uuid.uuid4().hex,
                "parts": [{"kind": "text", "text": plan["why"]}],
            },
        }
        task["metadata"]["spent"] = plan["spent"]
        if plan["spent"]:
            task["metadata"]["usage"] = plan["usage"]
            task["metadata"]["cost"] = plan["cost"]
            self.charge(agent_id, plan["cost"], now)
        if plan["state"] == "completed":
            task["artifacts"] = [
                {
                    "artifactId": uuid.uuid4().hex,
                    "name": "result",
                    "parts": [{"kind": "text", "text": "done"}],
                }
            ]


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _rpc_error(rid: Any, code: int, message: str) -> web.Response:
    return web.json_response(
        {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}
    )


def _rpc_result(rid: Any, result: Any) -> web.Response:
    return web.json_response({"jsonrpc": "2.0", "id": rid, "result": result})


def add_a2a_routes(app: web.Application, sb: Sandbox) -> A2AAgents:
    agents = A2AAgents(sb, sb.options.seed)
    app["a2a"] = agents
    background: set[asyncio.Task[None]] = set()

    def base_of(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    async def card(request: web.Request) -> web.Response:
        agent_id = request.match_info["agent_id"]
        if agent_id not in sb.state.agents:
            raise web.HTTPNotFound(reason=f"no agent {agent_id}")
        return web.json_response(agents.card(agent_id, base_of(request)))

    async def later(agent_id: str, task: dict[str, Any], plan: dict[str, Any]) -> None:
        await asyncio.sleep(min(plan["delay_s"], 0.001))
        if task["status"]["state"] == "submitted":
            task["status"] = {"state": "working", "timestamp": _iso(time.time())}
        await asyncio.sleep(plan["delay_s"])
        agents.finish(agent_id, task, plan)

    async def rpc(request: web.Request) -> web.Response:
        agent_id = request.match_info["agent_id"]
        try:
            body = await request.json()
        except ValueError:
            return _rpc_error(None, PARSE_ERROR, "body is not JSON")
        if not isinstance(body, dict) or body.get("jsonrpc") != "2.0" or "method" not in body:
            return _rpc_error(None, INVALID_REQUEST, "not a JSON-RPC 2.0 request")
        rid, method = body.get("id"), body["method"]
        params = body.get("params")
        if not isinstance(params, dict):
            return _rpc_error(rid, INVALID_PARAMS, "params must be an object")
        if agent_id not in sb.state.agents:
            return _rpc_error(rid, INVALID_PARAMS, f"no agent {agent_id}")
        if method == "message/send":
            message = params.get("message")
            if not isinstance(message, dict) or not isinstance(message.get("parts"), list):
                return _rpc_error(rid, INVALID_PARAMS, "params.message with parts is required")
            config = params.get("configuration") or {}
            task = agents.new_task(agent_id, message, request.headers.get("traceparent"))
            plan = agents.plan(agent_id, message, time.time())
            if config.get("blocking", True) is False:
                job = asyncio.create_task(later(agent_id, task, plan))
                background.add(job)
                job.add_done_callback(background.discard)
                return _rpc_result(rid, task)
            task["status"] = {"state": "working", "timestamp": _iso(time.time())}
            await asyncio.sleep(plan["delay_s"])
            agents.finish(agent_id, task, plan)
            return _rpc_result(rid, task)
        if method in ("tasks/get", "tasks/cancel"):
            held = agents.tasks.get(str(params.get("id")))
            if held is None or held["metadata"].get("agent_id") != agent_id:
                return _rpc_error(rid, TASK_NOT_FOUND, "task not found")
            if method == "tasks/cancel":
                if held["status"]["state"] in TERMINAL:
                    return _rpc_error(rid, TASK_NOT_CANCELABLE, "task already finished")
                held["status"] = {"state": "canceled", "timestamp": _iso(time.time())}
            return _rpc_result(rid, held)
        return _rpc_error(rid, METHOD_NOT_FOUND, f"method {method} not supported")

    def admin(request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        return (token or request.headers.get("X-API-Key", "")) == sb.options.admin_key

    async def received(request: web.Request) -> web.Response:
        """Control: how many tasks each agent received (tests count dispatches with it)."""
        if not admin(request):
            raise web.HTTPUnauthorized(reason="the control API needs the admin key")
        return web.json_response({"received": agents.received, "work_ms": agents.work_ms})

    async def configure(request: web.Request) -> web.Response:
        """Control: ``{"work_ms": 3000}`` makes every agent take that long; null undoes it."""
        if not admin(request):
            raise web.HTTPUnauthorized(reason="the control API needs the admin key")
        body = await request.json()
        value = body.get("work_ms") if isinstance(body, dict) else "missing"
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
        ):
            raise web.HTTPBadRequest(reason="work_ms: a number of milliseconds >= 0, or null")
        agents.work_ms = None if value is None else float(value)
        return web.json_response({"work_ms": agents.work_ms})

    async def list_service(request: web.Request) -> web.Response:
        """Control: list a simulated agent in the marketplace as a service whose endpoint
        is its A2A endpoint: ``{"agent_id": "...", "capabilities": ["translate"],
        "cost": "0.05", "trust_score": 0.9}`` (cost and trust score optional)."""
        if not admin(request):
            raise web.HTTPUnauthorized(reason="the control API needs the admin key")
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(reason="body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(reason="body: an object")
        problems = []
        agent_id = body.get("agent_id")
        if not isinstance(agent_id, str) or agent_id not in sb.state.agents:
            problems.append("agent_id: a simulated agent's id")
        caps = body.get("capabilities")
        if (
            not isinstance(caps, list)
            or not caps
            or not all(isinstance(c, str) and c for c in caps)
        ):
            problems.append("capabilities: a non-empty list of strings")
        trust = body.get("trust_score", 0.9)
        if isinstance(trust, bool) or not isinstance(trust, (int, float)) or not 0 <= trust <= 1:
            problems.append("trust_score: a number from 0 to 1")
        try:
            cost = Decimal(str(body.get("cost", "0.05")))
            if not cost.is_finite() or cost < 0:
                raise ArithmeticError
        except ArithmeticError:
            problems.append("cost: a decimal >= 0")
        if problems:
            raise web.HTTPBadRequest(reason="; ".join(problems))
        assert isinstance(agent_id, str) and isinstance(caps, list)
        service_id = "svc-" + uuid.uuid4().hex[:12]
        sb.state.services[service_id] = {
            "id": service_id,
            "provider_id": agent_id,
            "name": f"{agent_id} (simulated)",
            "description": f"simulated agent {agent_id} over A2A",
            "category": "agents",
            "tools": list(caps),
            "tags": list(caps),
            "endpoint": f"{base_of(request)}/a2a/{agent_id}",
            "model": "per_call",
            "cost": str(cost),
            "trust_score": float(trust),
            "status": "active",
            "created_at": time.time(),
        }
        sb.state.touch("services", service_id)
        return web.json_response(
            {"id": service_id, "endpoint": sb.state.services[service_id]["endpoint"]}
        )

    app.router.add_get("/a2a/{agent_id}/.well-known/agent-card.json", card)
    app.router.add_post("/a2a/{agent_id}", rpc)
    app.router.add_get("/_sandbox/a2a", received)
    app.router.add_put("/_sandbox/a2a", configure)
    app.router.add_post("/_sandbox/a2a/services", list_service)
    return agents
