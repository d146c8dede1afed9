"""The gateway's event stream, ``GET /v1/events/stream``: an async iterator of bus events.

Server-sent events (real-gateway.md §11): frames ``id: N`` / ``data: {event JSON}``,
``: heartbeat`` comments every 5 s, the connection closed by the gateway after an
hour, resumable with ``Last-Event-ID``. :class:`EventStream` reconnects after the
close or a failure from the last event it yielded, so the events it yields have
strictly rising ids with no gap the gateway still holds (it keeps 24 h) and no
double; a frame that is not a valid event is counted and skipped, never yielded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

log = logging.getLogger(__name__)

PATH = "/v1/events/stream"


class BusEvent(BaseModel):
    """One event as the stream and ``GET /v1/infra/events`` carry it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: int = Field(ge=1)
    event_type: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=200)
    payload: Any = None
    created_at: str | None = None
    # The event as it came: what is handed on, without a second serialisation.
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def raw(self) -> dict[str, Any]:
        return self._raw or self.model_dump(mode="json")


class StreamRefused(RuntimeError):
    """The gateway refuses the stream itself (bad key, no such route): retrying cannot help."""


@dataclass
class StreamStats:
    connects: int = 0
    closes: int = 0  # the gateway ended the response (its hourly close, a restart)
    failures: int = 0  # connection errors, timeouts, 5xx
    bad_frames: int = 0
    events: int = 0
    last_event_id: int = 0


class EventStream:
    """Every event after ``last_event_id``, forever, reconnecting as needed."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        last_event_id: int = 0,
        event_type: str | None = None,
        read_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + PATH
        self._key = api_key
        self._params = {"event_type": event_type} if event_type else {}
        self._timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._transport = transport
        self.stats = StreamStats(last_event_id=last_event_id)

    async def __aiter__(self) -> AsyncIterator[BusEvent]:
        delay = self._backoff[0]
        async with httpx.AsyncClient(timeout=self._timeout, transport=self._transport) as client:
            while True:
                try:
                    async for event in self._one_connection(client):
                        delay = self._backoff[0]
                        yield event
                    self.stats.closes += 1
                    log.info("event stream closed at id %d; resuming", self.stats.last_event_id)
                    continue
                except StreamRefused:
                    raise
                except (httpx.HTTPError, _ServerTrouble) as exc:
                    self.stats.failures += 1
                    log.warning(
                        "event stream failed at id %d (%s); retrying in %.1f s",
                        self.stats.last_event_id,
                        exc,
                        delay,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff[1])

    async def _one_connection(self, client: httpx.AsyncClient) -> AsyncIterator[BusEvent]:
        headers = {"Authorization": f"Bearer {self._key}", "Accept": "text/event-stream"}
        if self.stats.last_event_id:
            headers["Last-Event-ID"] = str(self.stats.last_event_id)
        async with client.stream("GET", self._url, params=self._params, headers=headers) as resp:
            if resp.status_code in (401, 403, 404, 410, 422):
                body = (await resp.aread())[:300].decode("utf-8", "replace")
                raise StreamRefused(f"{self._url} answered {resp.status_code}: {body}")
            if resp.status_code != 200:
                raise _ServerTrouble(f"HTTP {resp.status_code}")
            self.stats.connects += 1
            frame_id: str | None = None
            data: list[str] = []
            async for line in resp.aiter_lines():
                if line:
                    if line.startswith(":"):
                        continue  # a comment: the gateway's keep-alive beat
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "id":
                        frame_id = value
                    elif name == "data":
                        data.append(value)
                    continue
                if data:
                    event = self._event(frame_id, "\n".join(data))
                    if event is not None:
                        yield event
                frame_id, data = None, []

    def _event(self, frame_id: str | None, data: str) -> BusEvent | None:
        try:
            raw = orjson.loads(data)
            event = BusEvent.model_validate(raw)
        except (orjson.JSONDecodeError, ValidationError) as exc:
            self.stats.bad_frames += 1
            log.warning("event stream frame %s refused: %s", frame_id, str(exc)[:300])
            return None
        if frame_id is not None and frame_id != str(event.id):
            self.stats.bad_frames += 1
            log.warning("event stream frame id %s carries event %d: refused", frame_id, event.id)
            return None
        if event.id <= self.stats.last_event_id:
            return None  # sent again after a resume: already yielded
        self.stats.last_event_id = event.id
        self.stats.events += 1
        event._raw = raw
        return event


class _ServerTrouble(Exception):
    pass


__all__ = ["BusEvent", "EventStream", "StreamRefused", "StreamStats"]
