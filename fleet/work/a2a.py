"""Delivery over A2A with the official ``a2a-sdk`` client.

The agent's card (``{base}/.well-known/agent-card.json``) names its endpoint and
protocol; the sandbox's agents speak A2A 0.3 over JSON-RPC, so the SDK sends
``message/send``. A task answered in a non-final state (submitted, working) is
followed with ``tasks/get`` until it ends or the delivery's deadline passes.

Whether the agent may have spent decides what the caller may do next:

- nothing reached the agent (card unreachable, connection refused), or the agent
  answered ``rejected`` or ``failed`` saying it spent nothing (``metadata.spent``
  false): ``spent=False``, the task may go to another agent;
- anything else that is not ``completed`` (a timeout after the message went out, a
  failure without that statement): ``spent=True``, the task is never run again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
import httpx
from a2a.client import A2ACardResolver, ClientCallContext, ClientConfig, ClientFactory
from a2a.client.client import Client
from a2a.client.errors import A2AClientError
from a2a.types.a2a_pb2 import (
    AgentCard,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    Task,
    TaskState,
)
from google.protobuf.json_format import MessageToDict

FINAL = {
    TaskState.TASK_STATE_COMPLETED: "completed",
    TaskState.TASK_STATE_FAILED: "failed",
    TaskState.TASK_STATE_CANCELED: "canceled",
    TaskState.TASK_STATE_REJECTED: "rejected",
}


@dataclass(frozen=True)
class Outcome:
    state: str  # completed | failed | canceled | rejected | timeout | unreachable | error
    spent: bool  # the agent may have spent: never run the task again
    latency_ms: float
    detail: str = ""
    remote_task_id: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: Decimal | None = None  # what the agent reports it cost
    traceparent_seen: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "completed"


def _metadata(task: Task) -> dict[str, Any]:
    return MessageToDict(task.metadata) if task.HasField("metadata") else {}


def _decimal(value: Any) -> Decimal | None:
    try:
        out = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return out if out.is_finite() and out >= 0 else None


def outcome_of(task: Task, started: float) -> Outcome:
    meta = _metadata(task)
    state = FINAL.get(task.status.state, "working")
    usage = meta.get("usage") or {}
    said_spent = meta.get("spent")
    spent = state == "completed" or not (state in ("failed", "rejected") and said_spent is False)
    detail = " ".join(p.text for p in task.status.message.parts if p.text)
    return Outcome(
        state,
        spent,
        (time.monotonic() - started) * 1000,
        detail,
        task.id or None,
        int(usage["input_tokens"]) if "input_tokens" in usage else None,
        int(usage["output_tokens"]) if "output_tokens" in usage else None,
        _decimal(meta["cost"]) if "cost" in meta else None,
        meta.get("traceparent"),
    )


_SKIP_REQUEST = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_SKIP_RESPONSE = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's transport on aiohttp's connection pool.

    The SDK speaks httpx; httpcore's pool scans every connection on each request, which at
    hundreds of connections in flight cost most of the delivery's CPU (cProfile: 2.7 of
    14 s in ``is_idle`` alone). aiohttp's pool does not.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=30),
                auto_decompress=True,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout") or {}
        total = max((v for v in timeouts.values() if v is not None), default=None)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_REQUEST}
        try:
            async with self._client().request(
                request.method,
                str(request.url),
                headers=headers,
                data=await request.aread() or None,
                timeout=aiohttp.ClientTimeout(total=total),
                allow_redirects=False,
            ) as answer:
                content = await answer.read()
                status = answer.status
                out = [(k, v) for k, v in answer.headers.items() if k.lower() not in _SKIP_RESPONSE]
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except TimeoutError as exc:
            raise httpx.ReadTimeout("timed out", request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc), request=request) from exc
        return httpx.Response(status, headers=out, content=content, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class A2ADelivery:
    """One per process, used on one event loop: a shared connection pool, cards cached."""

    def __init__(
        self,
        *,
        max_connections: int = 256,
        card_ttl_s: float = 300.0,
        poll_interval_s: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            timeout=httpx.Timeout(30.0),
            transport=transport or AiohttpTransport(max_connections),
        )
        self._factory = ClientFactory(ClientConfig(streaming=False, httpx_client=self._http))
        self._card_ttl_s = card_ttl_s
        self._poll_interval_s = poll_interval_s
        self._clients: dict[str, tuple[Client, float]] = {}
        self._resolving: dict[str, asyncio.Future[Client]] = {}

    async def _client(self, base_url: str) -> Client:
        cached = self._clients.get(base_url)
        if cached is not None and time.monotonic() - cached[1] < self._card_ttl_s:
            return cached[0]
        pending = self._resolving.get(base_url)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self._resolving[base_url] = future
        try:
            card: AgentCard = await A2ACardResolver(self._http, base_url).get_agent_card()
            client = self._factory.create(card)
            self._clients[base_url] = (client, time.monotonic())
            future.set_result(client)
            return client
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            del self._resolving[base_url]

    async def deliver(
        self,
        base_url: str,
        *,
        text: str,
        metadata: Mapping[str, Any],
        headers: Mapping[str, str],
        timeout_s: float,
    ) -> Outcome:
        started = time.monotonic()
        deadline = started + timeout_s
        try:
            client = await asyncio.wait_for(self._client(base_url), timeout_s)
        except (A2AClientError, httpx.HTTPError, TimeoutError, ValueError, OSError) as exc:
            return Outcome("unreachable", False, _ms(started), f"agent card: {exc!r}"[:300])
        message = Message(
            message_id=uuid.uuid4().hex,
            role=Role.ROLE_USER,
            parts=[Part(text=text)],
            metadata=dict(metadata),
        )
        context = ClientCallContext(
            timeout=max(deadline - time.monotonic(), 0.001), service_parameters=dict(headers)
        )
        task: Task | None = None
        try:
            async for event in client.send_message(
                SendMessageRequest(message=message), context=context
            ):
                if event.HasField("task"):
                    task = event.task
                elif event.HasField("message"):
                    # A direct answer, no task: the agent did the work.
                    return Outcome("completed", True, _ms(started), "answered with a message")
        except httpx.ConnectError as exc:
            return Outcome("unreachable", False, _ms(started), f"connect: {exc!r}"[:300])
        except (A2AClientError, httpx.HTTPError, TimeoutError, OSError) as exc:
            # The message may have reached the agent: treat it as spent.
            if isinstance(exc.__cause__, httpx.ConnectError):
                return Outcome("unreachable", False, _ms(started), f"connect: {exc!r}"[:300])
            state = "timeout" if "imeout" in type(exc).__name__ else "error"
            return Outcome(state, True, _ms(started), repr(exc)[:300])
        if task is None:
            return Outcome("error", True, _ms(started), "no task in the answer")
        while task.status.state not in FINAL:
            left = deadline - time.monotonic()
            if left <= 0:
                return Outcome("timeout", True, _ms(started), f"still {task.status.state}", task.id)
            await asyncio.sleep(min(self._poll_interval_s, left))
            try:
                task = await client.get_task(
                    GetTaskRequest(id=task.id),
                    context=ClientCallContext(
                        timeout=max(deadline - time.monotonic(), 0.001),
                        service_parameters=dict(headers),
                    ),
                )
            except (A2AClientError, httpx.HTTPError, TimeoutError, OSError) as exc:
                return Outcome("error", True, _ms(started), repr(exc)[:300], task.id)
        return outcome_of(task, started)

    async def aclose(self) -> None:
        await self._http.aclose()


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
