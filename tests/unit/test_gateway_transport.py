"""Both clients over real loopback sockets, on their default transports.

A tiny in-process HTTP server stands in for the gateway, so the async
client's keep-alive transport (fleet.gateway.wire) is checked to turn its own
failures (dropped connections, timeouts, refused connects) into
``Unavailable`` as httpx's sync transport does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fleet.gateway import AsyncGatewayClient, GatewayClient, GatewayConfig, Unavailable, tools


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((body["tool"], self.headers.get("traceparent", "")))
        agent_id = body["input"].get("agent_id", "")
        if agent_id == "drop":
            self.close_connection = True  # hang up without an answer
            return
        if agent_id == "slow":
            time.sleep(0.5)
        payload = json.dumps({"balance": "50.00", "burn_rate_per_hour": "0.50"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the fan-out test connects 20 at once
    seen: list[tuple[str, str]]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out leaves a broken pipe behind: expected here


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _config(url: str) -> GatewayConfig:
    return GatewayConfig(
        url=url,
        admin_key="k",
        timeout_s=0.2,
        connect_timeout_s=2.0,
        max_attempts=2,
        backoff_initial_s=0.0,
        backoff_max_s=0.0,
        breaker_failure_threshold=100,
    )


def _url(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sync_client_over_sockets(server: _Server) -> None:
    server.seen.clear()
    with GatewayClient(_config(_url(server))) as client:
        assert client.run(tools.get_balance("a-1")).burn_rate_per_hour == 0.5
        for agent_id, code in (("drop", "connection_error"), ("slow", "timeout")):
            with pytest.raises(Unavailable) as info:
                client.run(tools.get_balance(agent_id))
            assert info.value.code == code
            assert info.value.maybe_processed
    assert len(server.seen) == 5  # 1 + 2 attempts each for drop and slow
    assert all(traceparent.startswith("00-") for _, traceparent in server.seen)

    closed = _config(f"http://127.0.0.1:{_closed_port()}/v1")
    with GatewayClient(closed) as client, pytest.raises(Unavailable) as info:
        client.call("get_balance", {"agent_id": "a-1"})
    assert info.value.maybe_processed is False


def test_async_client_over_its_keepalive_transport(server: _Server) -> None:
    server.seen.clear()

    async def main() -> None:
        async with AsyncGatewayClient(_config(_url(server))) as client:
            results = await asyncio.gather(
                *(client.run(tools.get_balance(f"a-{i}")) for i in range(20))
            )
            assert all(r.balance == 50 for r in results)
            for agent_id, code in (("drop", "connection_error"), ("slow", "timeout")):
                with pytest.raises(Unavailable) as info:
                    await client.run(tools.get_balance(agent_id))
                assert info.value.code == code
                assert info.value.maybe_processed

        async with AsyncGatewayClient(_config(f"http://127.0.0.1:{_closed_port()}/v1")) as client:
            with pytest.raises(Unavailable) as info:
                await client.call("get_balance", {"agent_id": "a-1"})
            assert info.value.maybe_processed is False

    asyncio.run(main())
    assert len(server.seen) == 24
