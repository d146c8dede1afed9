"""HTTP/1.1 keep-alive connections to the gateway, on asyncio protocols.

The monitoring sweep makes tens of thousands of small POSTs a minute to one
host, and on two cores the client's CPU per request decides how long that
takes: a general-purpose client costs several times this pool's CPU per
request (README, "Performance"). It does only
what the gateway protocol needs: one origin per pool, a body of known length,
answers framed by Content-Length, chunks or the connection's close (parsed by
httptools, the llhttp parser uvicorn uses), TLS for https, a bounded pool of
connections reused LIFO and dropped when idle too long. :class:`WireTransport`
puts httpx's transport API on top, for the general async client.

Nothing is ever sent twice here: a connection that fails after the request
went out may have run the call (a spend, say), so the failure goes to the
caller marked ``sent``, and the gateway client's retry rule decides. Keep
``keepalive_s`` below the server's idle timeout, so that the race of reusing a
connection the server is just closing stays rare.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from http import HTTPStatus
from urllib.parse import urlsplit

import httptools
import httpx


class WireError(Exception):
    """The connection failed or the answer was not HTTP; nothing is known of the call's fate."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent  # the request may have reached the server


class WireTimeout(WireError):
    pass


class UnsafeHeader(ValueError):
    """A header name or value holds CR, LF or NUL: sent, it would split the request."""


class AnswerTooLarge(WireError):
    """The answer's headers or body passed the configured cap; the connection was dropped."""


# Answers bigger than these fail the connection: the gateway's are a few kilobytes, and a
# server (or whoever sits in front of it) streaming without end must not fill our memory.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024

_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")


def check_headers(headers: Mapping[str, str]) -> None:
    """Refuse any header that would let a value start a new header or a new request."""
    for name, value in headers.items():
        for part, what in ((name, "name"), (value, "value")):
            if any(c in part for c in _FORBIDDEN_IN_HEADERS):
                raise UnsafeHeader(
                    f"header {name!r}: its {what} contains CR, LF or NUL; refused before sending"
                )
        if not name:
            raise UnsafeHeader("empty header name; refused before sending")


class Answer:
    """Status, headers (names lowercased) and body of one HTTP answer."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, content: bytes, headers: Mapping[str, str]) -> None:
        self.status_code = status_code
        self.content = content
        self.headers = headers

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    @property
    def reason_phrase(self) -> str:
        try:
            return HTTPStatus(self.status_code).phrase
        except ValueError:
            return ""


class _Oversized(Exception):
    """Raised from a parser callback to stop parsing an answer past its cap."""


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_body_bytes",
        "_framed",
        "_head_bytes",
        "_header_bytes",
        "_headed",
        "_headers",
        "_max_body",
        "_max_header",
        "_parser",
        "_waiter",
        "closed",
        "idle_since",
        "sent",
        "transport",
    )

    def __init__(
        self,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._max_header = max_header_bytes
        self._max_body = max_body_bytes
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = time.monotonic()
        self.sent = False  # the current request went out
        self._waiter: asyncio.Future[Answer] | None = None
        self._reset()

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._head_bytes = 0  # bytes fed while the headers were incomplete
        self._header_bytes = 0  # the headers' own size, as parsed
        self._body_bytes = 0
        self._headed = False  # the answer's status line and headers are in
        self._framed = False  # the answer says where it ends (length or chunks)

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._headed:
            # Until the headers are complete every byte is status line or header.
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
            if not self._headed and self._head_bytes > self._max_header:
                raise _Oversized(f"answer headers exceed {self._max_header} bytes")
        except _Oversized as exc:
            self._fail(AnswerTooLarge(f"{exc}: connection dropped", sent=True))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Oversized):
                self._fail(AnswerTooLarge(f"{cause}: connection dropped", sent=True))
            else:
                self._fail(WireError(f"malformed HTTP answer: {exc}", sent=True))
        except httptools.HttpParserUpgrade:
            self._fail(WireError("unexpected protocol upgrade", sent=True))
        except httptools.HttpParserError as exc:
            self._fail(WireError(f"malformed HTTP answer: {exc}", sent=True))

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headed and not self._framed:
            # An answer without length or chunks ends when the connection does.
            self._complete(keep=False)
            return
        detail = f"{type(exc).__name__}: {exc}" if exc else "server closed the connection"
        waiter.set_exception(WireError(detail, sent=True))

    # --- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._max_header:
            raise _Oversized(f"answer headers exceed {self._max_header} bytes")
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        declared = self._headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_body:
            raise _Oversized(f"answer body of {declared} bytes exceeds {self._max_body} bytes")
        self._headed = True
        self._framed = "content-length" in self._headers or "chunked" in self._headers.get(
            "transfer-encoding", ""
        )

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._max_body:
            raise _Oversized(f"answer body exceeds {self._max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete(keep=self._parser.should_keep_alive())

    # --- ours

    def _complete(self, *, keep: bool) -> None:
        answer = Answer(self._parser.get_status_code(), b"".join(self._body), self._headers)
        waiter = self._waiter
        self._waiter = None
        if not keep:
            self.close()
        else:
            self._reset()
            self.idle_since = time.monotonic()
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def _fail(self, error: WireError) -> None:
        waiter = self._waiter
        self._waiter = None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def send(self, request: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Answer]:
        assert self.transport is not None and self._waiter is None
        self._waiter = waiter = loop.create_future()
        self.transport.write(request)
        self.sent = True
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class ConnectionPool:
    """Up to ``limit`` keep-alive connections to the origin of ``url``; one per event loop."""

    def __init__(
        self,
        url: str,
        *,
        limit: int,
        connect_timeout_s: float,
        keepalive_s: float = 50.0,
        ssl_context: ssl.SSLContext | None = None,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if self._tls else None
        default_port = self._port == (443 if self._tls else 80)
        self._host_header = parts.netloc.rsplit("@", 1)[-1] if not default_port else self._host
        self._post_head = self.head(
            "POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        )
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)
        self._open: set[_Connection] = set()

    def head(self, method: str, target: str) -> bytes:
        """The request line and Host header of ``method target`` on this origin."""
        return f"{method} {target} HTTP/1.1\r\nHost: {self._host_header}\r\n".encode("latin-1")

    async def post(self, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Answer:
        """POST ``body`` to the pool's URL; the answer whatever its status, or WireError /
        WireTimeout."""
        return await self.send(self._post_head, headers, body, timeout_s)

    async def send(
        self, head: bytes, headers: Mapping[str, str], body: bytes, timeout_s: float
    ) -> Answer:
        """One request (``head`` from :meth:`head`; no Host or framing in ``headers``).

        Raises :class:`UnsafeHeader` before anything is sent if a header could split it.
        """
        check_headers(headers)
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = b"".join(
            (head, lines.encode("latin-1"), b"Content-Length: %d\r\n\r\n" % len(body), body)
        )
        async with self._slots:
            conn: _Connection | None = None
            try:
                async with asyncio.timeout(timeout_s):
                    conn = self._take() or await self._connect()
                    return await self._exchange(conn, request)
            except TimeoutError:
                sent = conn is not None and conn.sent
                raise WireTimeout(f"no answer within {timeout_s:g} s", sent=sent) from None

    async def _exchange(self, conn: _Connection, request: bytes) -> Answer:
        loop = asyncio.get_running_loop()
        conn.sent = False
        try:
            answer = await conn.send(request, loop)
        except (
            BaseException
        ):  # failed, cancelled or timed out mid-answer: the connection is unusable
            self._drop(conn)
            raise
        if conn.closed:
            self._drop(conn)
        else:
            self._idle.append(conn)
        return answer

    def _take(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            alive = (
                not conn.closed and conn.transport is not None and not conn.transport.is_closing()
            )
            if alive and now - conn.idle_since < self._keepalive_s:
                return conn
            self._drop(conn)
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._max_header_bytes, self._max_body_bytes),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._tls else None,
                )
        except TimeoutError:
            raise WireTimeout(
                f"connect to {self._host}:{self._port} timed out", sent=False
            ) from None
        except OSError as exc:
            raise WireError(f"connect to {self._host}:{self._port}: {exc}", sent=False) from exc
        self._open.add(conn)
        return conn

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    async def close(self) -> None:
        for conn in list(self._open):
            self._drop(conn)
        self._idle.clear()


# Hop-by-hop and framing headers: the pool writes its own.
_NOT_FORWARDED = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"}
)


class WireTransport(httpx.AsyncBaseTransport):
    """httpx's async transport API over :class:`ConnectionPool` s, one per origin.

    Use it on one event loop. Failures come out as httpx's own exceptions:
    a request that never left is ``ConnectError`` / ``ConnectTimeout``, one
    that may have reached the server ``ReadError`` / ``ReadTimeout``.
    Answers are not decompressed (none is asked for).
    """

    def __init__(
        self,
        *,
        limit: int,
        connect_timeout_s: float,
        keepalive_s: float = 50.0,
        ssl_context: ssl.SSLContext | None = None,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._limit = limit
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._ssl = ssl_context
        self._pools: dict[tuple[bytes, bytes, int | None], ConnectionPool] = {}

    def _pool(self, url: httpx.URL) -> ConnectionPool:
        origin = (url.raw_scheme, url.raw_host, url.port)
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = ConnectionPool(
                str(url.copy_with(path="/", query=None, fragment=None)),
                limit=self._limit,
                connect_timeout_s=self._connect_timeout_s,
                keepalive_s=self._keepalive_s,
                ssl_context=self._ssl,
                max_header_bytes=self._max_header_bytes,
                max_body_bytes=self._max_body_bytes,
            )
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool = self._pool(request.url)
        body = await request.aread()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        timeouts = request.extensions.get("timeout") or {}
        timeout_s = timeouts.get("read") or 3600.0
        try:
            answer = await pool.send(
                pool.head(request.method, request.url.raw_path.decode("ascii")),
                headers,
                body,
                timeout_s,
            )
        except WireTimeout as exc:
            raise (httpx.ReadTimeout if exc.sent else httpx.ConnectTimeout)(
                str(exc), request=request
            ) from exc
        except WireError as exc:
            raise (httpx.ReadError if exc.sent else httpx.ConnectError)(
                str(exc), request=request
            ) from exc
        return httpx.Response(
            answer.status_code,
            headers=list(answer.headers.items()),
            content=answer.content,
            request=request,
        )

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()


__all__ = [
    "AnswerTooLarge",
    "Answer",
    "ConnectionPool",
    "UnsafeHeader",
    "WireError",
    "WireTimeout",
    "WireTransport",
    "check_headers",
]
