"""The keep-alive wire (fleet/gateway/wire.py) refuses to split a request and to swallow an
endless answer.

On main a CR/LF in a header value (an agent key an operator pasted, say) went out
as written, starting a header or a request of the attacker's choosing, and an
answer of any size was read into memory. Each attack runs against a real server
on loopback.
"""

from __future__ import annotations

import asyncio

import pytest

from fleet.gateway import StaticKeyRing
from fleet.gateway import operations as ops
from fleet.gateway._core import GatewayConfig
from fleet.gateway.client import AsyncGatewayClient
from fleet.gateway.errors import GatewayError
from fleet.gateway.wire import AnswerTooLarge, ConnectionPool, UnsafeHeader
from tests.unit.test_gateway_wire import Server, echo_forever, read_request

INJECTIONS = [
    ({"X-Trace": "abc\r\nX-Admin: yes"}, "value"),
    ({"X-Trace": "abc\nX-Admin: yes"}, "value"),
    ({"X-Trace": "abc\rX-Admin: yes"}, "value"),
    ({"X-Trace": "abc\0"}, "value"),
    ({"X-Admin: yes\r\nX-Trace": "abc"}, "name"),
    ({"X-Tr\0ace": "abc"}, "name"),
]


@pytest.mark.parametrize(("headers", "part"), INJECTIONS)
def test_cr_lf_or_nul_in_a_header_is_refused_before_anything_is_sent(
    headers: dict[str, str], part: str
) -> None:
    async def go() -> None:
        async with Server(echo_forever()) as server:
            pool = ConnectionPool(server.url, limit=1, connect_timeout_s=1)
            with pytest.raises(UnsafeHeader, match=f"its {part} contains CR, LF or NUL"):
                await pool.post(b"{}", headers, 1.0)
            await pool.close()
            assert server.connections == 0, "nothing reached the server"

    asyncio.run(go())


def test_a_key_with_a_line_break_never_reaches_the_gateway() -> None:
    async def go() -> None:
        async with Server(echo_forever()) as server:
            config = GatewayConfig(url=server.url.removesuffix("/v1"), max_attempts=1)
            pasted = "admin-key\r\nX-Forwarded-For: 10.0.0.1"
            keys = StaticKeyRing(pasted, {"a": pasted})
            client = AsyncGatewayClient(config, keys)
            try:
                with pytest.raises(UnsafeHeader):
                    await client.run(ops.get_balance("a"))
            finally:
                await client.aclose()
            assert server.connections == 0

    asyncio.run(go())


def _answer_with(head: bytes, body_parts: list[bytes], forever: bytes | None = None):  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(head)
        for part in body_parts:
            writer.write(part)
            await writer.drain()
        while forever is not None:  # until the client hangs up
            writer.write(forever)
            await writer.drain()

    return handler


OVERSIZED = {
    "huge header": (
        _answer_with(b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 200_000 + b"\r\n\r\n", []),
        "answer headers exceed 65536 bytes",
    ),
    "endless headers": (
        _answer_with(b"HTTP/1.1 200 OK\r\n", [], forever=b"X-Pad: " + b"a" * 1000 + b"\r\n"),
        "answer headers exceed 65536 bytes",
    ),
    "declared length": (
        _answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n", [b"x" * 1000]),
        "answer body of 100000000 bytes exceeds 8192 bytes",
    ),
    "endless chunks": (
        _answer_with(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            [],
            forever=b"400\r\n" + b"x" * 1024 + b"\r\n",
        ),
        "answer body exceeds 8192 bytes",
    ),
    "endless close-delimited body": (
        _answer_with(b"HTTP/1.0 200 OK\r\n\r\n", [], forever=b"x" * 4096),
        "answer body exceeds 8192 bytes",
    ),
}


@pytest.mark.parametrize("case", list(OVERSIZED))
def test_an_oversized_answer_fails_the_connection_with_a_clear_error(case: str) -> None:
    handler, words = OVERSIZED[case]

    async def go() -> None:
        async with Server(handler) as server:
            pool = ConnectionPool(server.url, limit=1, connect_timeout_s=1, max_body_bytes=8192)
            with pytest.raises(AnswerTooLarge, match=words) as caught:
                await pool.post(b"{}", {}, 5.0)
            assert "connection dropped" in str(caught.value) and caught.value.sent
            assert not pool._open and not pool._idle, "the connection is gone"
            await pool.close()

    asyncio.run(go())


def test_the_caps_come_from_settings_and_the_client_reports_the_failure() -> None:
    from config.settings import load_settings

    settings = load_settings(
        gateway={"max_response_body_bytes": 4096, "max_response_header_bytes": 4096}
    )
    body = b'{"balance": "' + b"9" * 10_000 + b'"}'
    handler = _answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), [body])

    async def go() -> None:
        async with Server(handler) as server:
            config = GatewayConfig.from_settings(settings)
            config = GatewayConfig(
                url=server.url.removesuffix("/v1"),
                max_attempts=1,
                max_response_body_bytes=config.max_response_body_bytes,
                max_response_header_bytes=config.max_response_header_bytes,
            )
            client = AsyncGatewayClient(config, StaticKeyRing("k", {"a": "ka"}))
            try:
                with pytest.raises(GatewayError, match="exceeds 4096 bytes"):
                    await client.run(ops.get_balance("a"))
            finally:
                await client.aclose()

    asyncio.run(go())


def test_headers_over_the_cap_arriving_with_their_body_in_one_read_fail_too() -> None:
    """The whole answer in one segment: the parsed headers' size is what is checked."""
    head = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 6000 + b"\r\nContent-Length: 2\r\n\r\n{}"
    handler = _answer_with(head, [])

    async def go() -> None:
        async with Server(handler) as server:
            pool = ConnectionPool(server.url, limit=1, connect_timeout_s=1, max_header_bytes=4096)
            with pytest.raises(AnswerTooLarge, match="answer headers exceed 4096 bytes"):
                await pool.post(b"{}", {}, 5.0)
            await pool.close()

    asyncio.run(go())
