"""The agent's side of heartbeats: build, sign and publish them with the agent's own keys.

An agent's runtime holds two secrets of its own: its gateway API key (the bus
takes a publish from any key, and the call counts against the agent's hourly
window, not the operator's) and its Ed25519 identity key (exported for it with
``fleet keys identity AGENT``). Nothing else is needed::

    publisher = HeartbeatPublisher(client, "cs-triage-0001-1a2b3c4d", identity_key,
                                   interval_s=60)
    publisher.publish(HeartbeatMetrics(latency_p99_ms=820, error_rate=0.012))

``seq`` is the publish time in milliseconds (and at least one more than the
last), so it keeps rising across restarts of the agent without any state kept
on disk; the verifier drops anything whose seq does not rise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from fleet.gateway import Gateway
from fleet.gateway import operations as ops
from fleet.gateway.errors import AuthError, GatewayError, MissingKey
from fleet.gateway.keys import Auth
from fleet.monitoring.heartbeats import (
    EVENT_TYPE,
    Heartbeat,
    HeartbeatMetrics,
    public_key_hex,
    sign_heartbeat,
)

log = logging.getLogger(__name__)

MetricsSource = Callable[[], HeartbeatMetrics]


@dataclass(frozen=True, slots=True)
class Published:
    event_id: int
    heartbeat: Heartbeat


@dataclass(slots=True)
class RunSummary:
    sent: int = 0
    failed: int = 0
    # Beats whose slot had passed when the previous one returned: skipped, not bunched up.
    skipped: int = 0


def parse_metrics(data: Mapping[str, Any] | Any) -> HeartbeatMetrics:
    """``data`` as heartbeat metrics, or ValueError naming each bad field."""
    try:
        return HeartbeatMetrics.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'metrics'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"invalid heartbeat metrics: {problems}") from None


class HeartbeatPublisher:
    """One agent's heartbeats over a gateway client that holds that agent's own key."""

    def __init__(
        self,
        gateway: Gateway,
        agent_id: str,
        identity_key: Ed25519PrivateKey,
        *,
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be above 0")
        self.gateway = gateway
        self.agent_id = agent_id
        self.interval_s = interval_s
        self._key = identity_key
        self._clock = clock
        self._last_seq = -1

    @property
    def public_key(self) -> str:
        return public_key_hex(self._key)

    def next_heartbeat(self, metrics: HeartbeatMetrics) -> Heartbeat:
        now = self._clock()
        seq = max(self._last_seq + 1, int(now * 1000))
        self._last_seq = seq
        return Heartbeat(
            agent_id=self.agent_id,
            seq=seq,
            sent_at=round(now, 3),
            interval_s=self.interval_s,
            metrics=metrics,
        )

    def publish(self, metrics: HeartbeatMetrics) -> Published:
        """Sign and publish one heartbeat now; GatewayError if the gateway refused it."""
        heartbeat = self.next_heartbeat(metrics)
        op = ops.publish_event(
            EVENT_TYPE,
            self.agent_id,
            sign_heartbeat(heartbeat, self._key),
            auth=Auth.own(self.agent_id),
        )
        return Published(self.gateway.run(op).event_id, heartbeat)

    def run(
        self,
        metrics: MetricsSource,
        *,
        stop: threading.Event | None = None,
        beats: int | None = None,
        on_beat: Callable[[Published], None] | None = None,
    ) -> RunSummary:
        """Publish at the cadence until ``stop`` is set (or ``beats`` were attempted).

        A beat that fails is logged and counted, and the next one goes at its own
        slot: a late heartbeat is worth less than the next fresh one. A key the
        gateway does not accept ends the run (retrying cannot fix it).
        """
        stop = stop or threading.Event()
        summary = RunSummary()
        start = time.monotonic()
        slot = 0
        while not stop.is_set() and (beats is None or summary.sent + summary.failed < beats):
            try:
                reading = metrics()
                published = self.publish(reading)
            except (AuthError, MissingKey):
                raise
            except (GatewayError, ValueError) as exc:
                summary.failed += 1
                log.warning("heartbeat of %s not published: %s", self.agent_id, exc)
            else:
                summary.sent += 1
                if on_beat is not None:
                    on_beat(published)
            slot += 1
            behind = int((time.monotonic() - start) / self.interval_s) - slot
            if behind > 0:
                summary.skipped += behind
                slot += behind
            if beats is not None and summary.sent + summary.failed >= beats:
                break
            stop.wait(max(0.0, start + slot * self.interval_s - time.monotonic()))
        return summary


__all__ = ["HeartbeatPublisher", "Published", "RunSummary", "parse_metrics"]
