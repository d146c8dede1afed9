"""A lean HTTP/1.1 front for the sandbox's GET routes; every other request goes to aiohttp.

The monitoring sweep reads tens of thousands of balances, budgets and metrics
a minute over keep-alive connections, and on two shared cores the server's CPU
per request sets the pace. aiohttp's request machinery (URL objects, router,
middleware chain, response preparation) costs more than the sandbox's own
work on such a read, so plain ``GET`` requests of a REST route, without a body
and with a path that needs no percent-decoding, are framed, routed and
answered here, by the same handlers and with the same headers aiohttp would
send. The first request on a connection that is anything else (a body,
another method or version, an unknown or encoded path, an upgrade) hands the
connection, with every byte not yet answered, to aiohttp's protocol for the
rest of its life, so control routes, the event stream, 404/405 problems and
malformed requests behave exactly as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

# (begin, finish): begin() counts the call -> (now, faults, delay_s); finish(request, now,
# faults) runs it after the delay and returns the web.Response.
Handler = tuple[Callable[[], tuple[float, Any, float]], Callable[..., Any]]
_EMPTY_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())
_REFUSED_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"upgrade", b"expect"})
_MAX_LINE = 8190  # aiohttp's max_line_size and max_field_size
_SERVER = f"Server: {SERVER_SOFTWARE}\r\n".encode("latin-1")
_STATUS_LINES = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("latin-1") for s in HTTPStatus
}


class FastRequest:
    """The part of ``web.Request`` the REST handlers read, for a GET without a body."""

    __slots__ = ("_qs", "_query", "_store", "headers", "match_info", "method", "path", "transport")

    body_exists = False
    can_read_body = False

    def __init__(
        self,
        path: str,
        qs: str,
        headers: CIMultiDictProxy[str],
        match_info: dict[str, str],
        transport: asyncio.Transport,
    ) -> None:
        self.method = "GET"
        self.path = path
        self._qs = qs
        self._query: MultiDictProxy[str] | None = None
        self.headers = headers
        self.match_info = match_info
        self.transport: asyncio.Transport | None = transport
        self._store: dict[str, Any] = {}

    @property
    def query(self) -> MultiDictProxy[str]:
        # Decoded as yarl decodes it for aiohttp: '+' is a space, blank values kept.
        if self._query is None:
            self._query = (
                MultiDictProxy(MultiDict(parse_qsl(self._qs, keep_blank_values=True)))
                if self._qs
                else _EMPTY_QUERY
            )
        return self._query

    async def read(self) -> bytes:
        return b""

    def __getitem__(self, name: str) -> Any:
        return self._store[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._store[name] = value

    def get(self, name: str, default: Any = None) -> Any:
        return self._store.get(name, default)


class Router:
    """GET path templates in registration order; ``None`` marks a path aiohttp must answer."""

    def __init__(self) -> None:
        self._by_length: dict[int, list[tuple[tuple[str | None, ...], list[str], Any]]] = {}

    def add(self, template: str, handler: Handler | None) -> None:
        parts: list[str | None] = []
        names: list[str] = []
        for part in template.split("/"):
            if part.startswith("{") and part.endswith("}"):
                parts.append(None)
                names.append(part[1:-1])
            else:
                parts.append(part)
        self._by_length.setdefault(len(parts), []).append((tuple(parts), names, handler))

    def match(self, path: str) -> tuple[Handler, dict[str, str]] | None:
        segments = path.split("/")
        for parts, names, handler in self._by_length.get(len(segments), ()):
            values: list[str] = []
            for want, got in zip(parts, segments, strict=True):
                if want is None:
                    if not got or "{" in got or "}" in got:
                        break
                    values.append(got)
                elif want != got:
                    break
            else:
                if handler is None:
                    return None
                return handler, dict(zip(names, values, strict=True))
        return None


class _Date:
    """The ``Date`` header, formatted once a second."""

    second = -1
    line = b""

    @classmethod
    def header(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode("latin-1")
        return cls.line


def encode_response(response: web.Response, close: bool) -> bytes:
    """The bytes aiohttp would send for ``response`` (headers in the same order)."""
    body = response.body
    assert isinstance(body, bytes | bytearray | None)
    payload = bytes(body or b"")
    lines = [_STATUS_LINES.get(response.status) or f"HTTP/1.1 {response.status} \r\n".encode()]
    for name, value in response.headers.items():
        if name.lower() != "content-length":
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    lines.append(b"Content-Length: %d\r\n" % len(payload))
    lines.append(_Date.header())
    lines.append(_SERVER)
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    lines.append(payload)
    return b"".join(lines)


class FastProtocol(asyncio.Protocol):
    """One keep-alive connection: fast GETs answered here, one at a time, in order."""

    __slots__ = ("_buf", "_busy", "_fallback", "_live", "_router", "idle_since", "transport")

    def __init__(
        self, router: Router, fallback: Callable[[], asyncio.Protocol], live: set[FastProtocol]
    ) -> None:
        self._router = router
        self._fallback = fallback
        self._live = live
        self._buf = bytearray()
        self._busy = False
        self.transport: asyncio.Transport | None = None
        self.idle_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport.
        self.transport = transport  # type: ignore[assignment]
        self._live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._next()

    def _next(self) -> None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0 or end > _MAX_LINE:
            # aiohttp decides on a head longer than its line limit (and refuses it).
            if end >= 0 or len(buf) > _MAX_LINE:
                self._hand_off()
            return
        lines = bytes(buf[:end]).split(b"\r\n")
        request_line = lines[0].split(b" ")
        if (
            len(request_line) != 3
            or request_line[0] != b"GET"
            or request_line[2] != b"HTTP/1.1"
            or not request_line[1].startswith(b"/")
        ):
            self._hand_off()
            return
        pairs: list[tuple[str, str]] = []
        close = False
        host = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            lowered = name.lower()
            value = value.strip(b" \t")
            if (
                not sep
                or not name
                or name != name.strip()
                or (
                    lowered in _REFUSED_HEADERS
                    and not (lowered == b"content-length" and value == b"0")
                )
            ):
                self._hand_off()
                return
            if lowered == b"connection" and value.lower() == b"close":
                close = True
            elif lowered == b"host":
                host = True
            pairs.append((name.decode("latin-1"), value.decode("latin-1")))
        if not host:  # aiohttp refuses an HTTP/1.1 request without one (400)
            self._hand_off()
            return
        target = request_line[1].decode("latin-1")
        path, _, qs = target.partition("?")
        # Encoded characters and dot segments: yarl's decoding and normalising decide.
        if "%" in path or "#" in target or "/." in path:
            self._hand_off()
            return
        found = self._router.match(path)
        if found is None:
            self._hand_off()
            return
        del buf[: end + 4]
        handler, match_info = found
        assert self.transport is not None
        request = FastRequest(
            path, qs, CIMultiDictProxy(CIMultiDict(pairs)), match_info, self.transport
        )
        self._busy = True
        begin, finish = handler
        now, faults, delay = begin()
        loop = asyncio.get_running_loop()
        if delay > 0:
            loop.call_later(delay, self._start, finish, request, now, faults, close)
        else:
            self._start(finish, request, now, faults, close)

    def _start(
        self, finish: Callable[..., Any], request: FastRequest, now: float, faults: Any, close: bool
    ) -> None:
        asyncio.get_running_loop().create_task(self._answer(finish(request, now, faults), close))

    async def _answer(self, call: Any, close: bool) -> None:
        try:
            response = await call
        except asyncio.CancelledError:
            # A fault dropped the connection (the transport is already aborted).
            if self.transport is not None:
                self.transport.abort()
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        close = close or response.keep_alive is False
        transport.write(encode_response(response, close))
        if close:
            transport.close()
            return
        self._busy = False
        self.idle_since = time.monotonic()
        if self._buf:
            self._next()

    def _hand_off(self) -> None:
        """aiohttp's protocol takes the connection over, with the bytes not yet answered."""
        transport = self.transport
        if transport is None:
            return
        self._live.discard(self)
        self.transport = None
        protocol = self._fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._buf = bytes(self._buf), bytearray()
        protocol.data_received(data)

    def close_if_idle(self, now: float, idle_s: float) -> None:
        if self.transport is not None and not self._busy and now - self.idle_since > idle_s:
            self.transport.close()


def close_all(live: Iterable[FastProtocol]) -> None:
    for protocol in list(live):
        if protocol.transport is not None:
            protocol.transport.close()
