"""The sweep's keep-alive pool against scripted servers on loopback: framing, reuse, failures,
TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Self

import httpx
import pytest

from fleet.gateway.wire import ConnectionPool, WireError, WireTimeout, WireTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0].encode(), headers, body


class Server:
    """A loopback server running ``handler(reader, writer, connection_number)`` per connection."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.connections = 0
        self.ssl_context = ssl_context
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer, self.connections)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=self.ssl_context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"


def echo_forever(extra: bytes = b"") -> Handler:
    """Answer every request on the connection with its own body (Content-Length framing)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            line, _, body = await read_request(reader)
            assert line == b"POST /v1 HTTP/1.1"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"%sContent-Length: %d\r\n\r\n%s" % (extra, len(body), body)
            )
            await writer.drain()

    return handler


def run(coro: Awaitable[object]) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_one_connection_serves_every_request_in_turn() -> None:
    async def go() -> None:
        async with Server(echo_forever(b"Retry-After: 3\r\n")) as server:
            pool = ConnectionPool(server.url, limit=4, connect_timeout_s=1)
            for i in range(20):
                answer = await pool.post(b'{"n": %d}' % i, {"Authorization": "Bearer k"}, 1.0)
                assert (answer.status_code, answer.content) == (200, b'{"n": %d}' % i)
                assert answer.headers["retry-after"] == "3"  # names lowercased
            await pool.close()
            assert server.connections == 1

    run(go())


def test_concurrency_is_bounded_by_the_limit() -> None:
    async def go() -> None:
        async with Server(echo_forever()) as server:
            pool = ConnectionPool(server.url, limit=3, connect_timeout_s=1)
            answers = await asyncio.gather(*(pool.post(b"%d" % i, {}, 2.0) for i in range(30)))
            assert [a.content for a in answers] == [b"%d" % i for i in range(30)]
            assert server.connections == 3
            await pool.close()

    run(go())


def test_chunked_and_close_delimited_answers() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 1:
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b'5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n'
            )
            await writer.drain()
            await read_request(reader)  # still alive: chunked answers keep the connection
            writer.write(b'HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n{"x": 2}')
        else:
            writer.write(b'HTTP/1.0 200 OK\r\n\r\n{"b": 3}')  # ends with the connection
        await writer.drain()

    async def go() -> None:
        async with Server(handler) as server:
            pool = ConnectionPool(server.url, limit=1, connect_timeout_s=1)
            first = await pool.post(b"{}", {}, 1.0)
            assert (first.status_code, first.content) == (200, b'{"a": 1}')
            second = await pool.post(b"{}", {}, 1.0)
            assert (second.status_code, second.content) == (503, b'{"x": 2}')
            third = await pool.post(b"{}", {}, 1.0)
            assert (third.status_code, third.content) == (200, b'{"b": 3}')
            assert server.connections == 2
            await pool.close()

    run(go())


def test_a_reused_connection_the_server_closed_is_an_error_never_a_silent_resend() -> None:
    """The server may have run the call before hanging up: only the caller may decide to repeat
    it."""
    bodies: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            _, _, body = await read_request(reader)
            bodies.append(body)
            if body == b"2":
                writer.transport.abort()  # keep-alive was promised, but it hangs up unanswered
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    async def go() -> None:
        async with Server(handler) as server:
            pool = ConnectionPool(server.url, limit=1, connect_timeout_s=1)
            assert (await pool.post(b"1", {}, 1.0)).content == b"1"
            with pytest.raises(WireError) as caught:
                await pool.post(b"2", {}, 1.0)
            assert caught.value.sent
            assert (await pool.post(b"3", {}, 1.0)).content == b"3"  # on a new connection
            assert server.connections == 2
            await pool.close()

    run(go())
    assert bodies == [b"1", b"2", b"3"]


def test_a_reused_connection_cut_mid_answer_is_an_error_not_a_resend() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        _, _, body = await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        await read_request(reader)
        writer.write(
            b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"half'
        )  # the call ran: no resend
        await writer.drain()
        writer.transport.abort()

    async def go() -> None:
        async with Server(handler) as server:
            pool = ConnectionPool(server.url, limit=1, connect_timeout_s=1)
            await pool.post(b"1", {}, 1.0)
            with pytest.raises(WireError) as caught:
                await pool.post(b"2", {}, 1.0)
            assert caught.value.sent
            assert server.connections == 1
            await pool.close()

    run(go())


def test_a_new_connection_that_fails_is_an_error_not_a_resend() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.transport.abort()

    async def go() -> None:
        async with Server(handler) as server:
            pool = ConnectionPool(server.url, limit=1, connect_timeout_s=1)
            with pytest.raises(WireError) as caught:
                await pool.post(b"{}", {}, 1.0)
            assert caught.value.sent  # it may have run: the caller decides whether to repeat it
            assert server.connections == 1
            await pool.close()

    run(go())


def test_no_answer_in_time_is_a_timeout_and_the_connection_is_closed() -> None:
    hung_up: list[bool] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        _, _, body = await read_request(reader)
        if n == 1:
            writer.write(
                b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{"par'
            )  # and never the rest
            await writer.drain()
            hung_up.append(await asyncio.wait_for(reader.read(), 2) == b"")  # the client closed it
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    async def go() -> None:
        async with Server(handler) as server:
            pool = ConnectionPool(server.url, limit=1, connect_timeout_s=1)
            with pytest.raises(WireTimeout) as caught:
                await pool.post(b"{}", {}, 0.2)
            assert caught.value.sent
            assert (await pool.post(b"ok", {}, 1.0)).content == b"ok"
            assert server.connections == 2
            await pool.close()

    run(go())
    assert hung_up == [True]


def test_an_answer_saying_connection_close_is_not_followed_by_another_request() -> None:
    reused: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        _, _, body = await read_request(reader)
        close = b"Connection: close\r\n" if n == 1 else b""
        writer.write(
            b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (close, len(body), body)
        )
        await writer.drain()
        if n == 1:  # said close, but leaves the socket open a while: the client must not use it
            with contextlib.suppress(asyncio.IncompleteReadError, TimeoutError):
                reused.append((await asyncio.wait_for(read_request(reader), 0.5))[2])

    async def go() -> None:
        async with Server(handler) as server:
            pool = ConnectionPool(server.url, limit=1, connect_timeout_s=1)
            assert (await pool.post(b"1", {}, 1.0)).content == b"1"
            assert (await pool.post(b"2", {}, 1.0)).content == b"2"
            assert server.connections == 2
            await pool.close()

    run(go())
    assert reused == []


def test_refused_connection_was_never_sent() -> None:
    async def go() -> None:
        async with Server(echo_forever()) as server:
            url = server.url
        pool = ConnectionPool(url, limit=1, connect_timeout_s=1)
        with pytest.raises(WireError) as caught:
            await pool.post(b"{}", {}, 1.0)
        assert not caught.value.sent and "connect to 127.0.0.1" in str(caught.value)

    run(go())


def test_garbage_instead_of_http_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def go() -> None:
        async with Server(handler) as server:
            pool = ConnectionPool(server.url, limit=1, connect_timeout_s=1)
            with pytest.raises(WireError, match="malformed HTTP answer"):
                await pool.post(b"{}", {}, 1.0)
            await pool.close()

    run(go())


def test_idle_connections_past_keepalive_are_not_reused() -> None:
    async def go() -> None:
        async with Server(echo_forever()) as server:
            pool = ConnectionPool(server.url, limit=1, connect_timeout_s=1, keepalive_s=0.05)
            await pool.post(b"1", {}, 1.0)
            await asyncio.sleep(0.1)
            await pool.post(b"2", {}, 1.0)
            assert server.connections == 2
            await pool.close()

    run(go())


def test_not_an_http_url_is_refused() -> None:
    with pytest.raises(ValueError, match="not an http"):
        ConnectionPool("ftp://example.org/v1", limit=1, connect_timeout_s=1)


def test_https(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cafile=str(cert_file))

    async def go() -> None:
        async with Server(echo_forever(), ssl_context=server_ctx) as server:
            untrusting = ConnectionPool(server.url, limit=1, connect_timeout_s=1)
            with pytest.raises(WireError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.post(b"{}", {}, 1.0)
            pool = ConnectionPool(server.url, limit=1, connect_timeout_s=1, ssl_context=client_ctx)
            assert (await pool.post(b"secret", {}, 1.0)).content == b"secret"
            await pool.close()

    run(go())


def test_httpx_over_the_transport_sends_the_request_as_given() -> None:
    seen: list[tuple[bytes, dict[str, str], bytes]] = []
    ports: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            request = await read_request(reader)
            seen.append(request)
            writer.write(b"HTTP/1.1 201 Created\r\nX-Trace: t1\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()

    async def go() -> None:
        async with Server(handler) as server:
            port = server.url.split(":")[2].split("/")[0]
            ports.append(port)
            async with httpx.AsyncClient(
                transport=WireTransport(limit=2, connect_timeout_s=1)
            ) as client:
                for _ in range(3):
                    response = await client.post(
                        f"http://127.0.0.1:{port}/v1?x=1",
                        content=b'{"a": 1}',
                        headers={"Authorization": "Bearer k"},
                    )
                    assert (response.status_code, response.json(), response.headers["x-trace"]) == (
                        201,
                        {},
                        "t1",
                    )
            assert server.connections == 1

    run(go())
    line, headers, body = seen[0]
    assert line == b"POST /v1?x=1 HTTP/1.1" and body == b'{"a": 1}'
    assert headers["host"] == f"127.0.0.1:{ports[0]}" and headers["authorization"] == "Bearer k"
    assert "accept-encoding" not in headers  # answers are never compressed, so never asked to be


def test_httpx_over_the_transport_raises_httpx_errors_that_say_whether_it_was_sent() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        _, _, body = await read_request(reader)
        if body == b"cut":
            writer.transport.abort()
        else:
            await asyncio.sleep(2)

    async def go() -> None:
        async with Server(handler) as server:
            url = server.url
            async with httpx.AsyncClient(
                transport=WireTransport(limit=2, connect_timeout_s=1), timeout=httpx.Timeout(0.2)
            ) as client:
                with pytest.raises(httpx.ReadError):
                    await client.post(url, content=b"cut")
                with pytest.raises(httpx.ReadTimeout):
                    await client.post(url, content=b"slow")
        async with httpx.AsyncClient(
            transport=WireTransport(limit=2, connect_timeout_s=1)
        ) as client:
            with pytest.raises(httpx.ConnectError):
                await client.post(url, content=b"{}")

    run(go())


def test_the_async_client_resends_a_read_once_when_the_server_drops_a_kept_alive_connection() -> (
    None
):
    """uvicorn closes the connection after an error answer without saying so; the next
    request on it dies unanswered. A read goes again on a new connection; a message does not."""
    from fleet.gateway import (
        AsyncGatewayClient,
        GatewayConfig,
        NotFound,
        StaticKeyRing,
        Unavailable,
    )
    from fleet.gateway import operations as o

    lines: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            line, _, _ = await read_request(reader)
            lines.append(line)
            if line.startswith(b"GET /v1/billing/estimate"):
                body = b'{"type": "https://api.greenhelix.net/errors/not-found", "status": 404}'
                writer.write(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
                await read_request(reader)  # the next request on this connection ...
                writer.transport.abort()  # ... meets a connection the server has dropped
                return
            body = b'{"balance": "1.00"}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    async def go() -> None:
        async with Server(handler) as server:
            config = GatewayConfig(url=server.url.removesuffix("/v1"), max_attempts=1)
            client = AsyncGatewayClient(config, StaticKeyRing("k", {"a": "ka"}))
            try:
                with pytest.raises(NotFound):
                    await client.run(o.estimate_cost("unknown"))
                assert (await client.run(o.get_balance("a"))).balance == 1
                assert server.connections == 2
                with pytest.raises(NotFound):
                    await client.run(o.estimate_cost("unknown"))
                with pytest.raises(Unavailable) as caught:
                    await client.run(o.send_message("a", "b", "text", "s", "b"))
                assert caught.value.maybe_processed
            finally:
                await client.aclose()

    run(go())
    assert lines.count(b"GET /v1/billing/wallets/a/balance HTTP/1.1") == 1
    assert lines.count(b"POST /v1/messaging/messages HTTP/1.1") == 0  # read by the dropper only
