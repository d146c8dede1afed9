"""The SSE client's framing and resume logic, against scripted responses."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from fleet.gateway.stream import EventStream, StreamRefused


def frame(event_id: int, source: str = "a-1", frame_id: int | None = None) -> bytes:
    event = {
        "id": event_id,
        "event_type": "fleet.agent.heartbeat",
        "source": source,
        "payload": {"seq": event_id},
        "integrity_hash": "h",
        "created_at": "2026-12-02T00:00:00",
    }
    return b"id: %d\ndata: %s\n\n" % (frame_id or event_id, orjson.dumps(event))


def scripted(bodies: list[bytes | int]) -> tuple[httpx.MockTransport, list[str | None]]:
    """Each connection answers the next body (an int: that status); records Last-Event-ID."""
    seen: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Last-Event-ID"))
        body = bodies.pop(0) if bodies else b": heartbeat\n\n"
        if isinstance(body, int):
            return httpx.Response(body, text="nope")
        return httpx.Response(200, content=body, headers={"Content-Type": "text/event-stream"})

    return httpx.MockTransport(handle), seen


async def take(stream: EventStream, n: int) -> list[int]:
    out: list[int] = []
    async for event in stream:
        out.append(event.id)
        if len(out) == n:
            break
    return out


def test_it_resumes_after_each_close_from_the_last_event_and_never_yields_one_twice() -> None:
    transport, seen = scripted(
        [
            b": heartbeat\n\n" + frame(1) + frame(2),
            # Resent after the resume (a gateway that ignored Last-Event-ID) and a new one.
            frame(2) + frame(3),
            503,
            frame(4),
        ]
    )
    stream = EventStream("http://gw", "k", transport=transport, backoff_initial_s=0.001)
    assert asyncio.run(take(stream, 4)) == [1, 2, 3, 4]
    assert seen == [None, "2", "3", "3"]
    assert stream.stats.closes == 2 and stream.stats.failures == 1


def test_frames_that_are_not_events_are_counted_and_skipped() -> None:
    transport, _ = scripted(
        [b"data: {not json\n\n" + frame(5, frame_id=6) + b'data: {"id": 0}\n\n' + frame(7)]
    )
    stream = EventStream("http://gw", "k", last_event_id=4, transport=transport)
    assert asyncio.run(take(stream, 1)) == [7]
    assert stream.stats.bad_frames == 3


def test_a_refused_key_ends_the_stream_loudly() -> None:
    transport, _ = scripted([401])
    with pytest.raises(StreamRefused, match="401"):
        asyncio.run(take(EventStream("http://gw", "bad", transport=transport), 1))
