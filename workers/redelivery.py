"""A worker that (re)connects takes back its queues' messages that a dead worker held.

Redis hands an unacknowledged message back only after the visibility timeout (an
hour, so that long countdowns are never redelivered early). A worker killed with
its prefetched messages would leave them there that long: provisioning steps,
audit batches, escalation actions. So a starting worker puts back on its queues
every message of theirs that was delivered before it started and never
acknowledged. Where other workers of the same queue still run, a message one of
them is working on runs twice; every state-changing task is idempotent (late ack
means it can run twice anyway), which is what makes this safe.

A worker that loses its connection to Redis (Redis restarted) exits instead of
reconnecting in place: a prefork worker's event loop can stop consuming after a
reconnection (Celery issues #8030, #8091), and the deliveries of the lost
connection can no longer be acknowledged anyway. Its supervisor (`fleet up`,
compose's restart policy, Kubernetes) starts a fresh one, which takes them back.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Iterable
from typing import Any

from celery import Celery, bootsteps
from celery.worker.consumer import Consumer

log = logging.getLogger("fleet.workers")


def take_back_unacked(
    celery_app: Celery,
    queues: Iterable[str],
    delivered_before: float,
    mine: Iterable[str] = (),
) -> int:
    """Restore to their queues the unacknowledged messages of ``queues`` delivered before
    ``delivered_before`` (epoch seconds), except the delivery tags in ``mine`` (this
    connection's own); returns how many."""
    wanted, own = set(queues), set(mine)
    restored = 0
    with celery_app.connection_for_write() as conn:
        channel = conn.default_channel
        if not hasattr(channel, "unacked_key"):  # not the Redis transport
            return 0
        client = channel.client
        delivered = dict(
            client.zrangebyscore(channel.unacked_index_key, 0, delivered_before, withscores=True)
        )
        for tag in delivered:
            if (tag.decode() if isinstance(tag, bytes) else tag) in own:
                continue
            raw = client.hget(channel.unacked_key, tag)
            if raw is None:
                continue  # acknowledged meanwhile
            _message, _exchange, routing_key = json.loads(raw)
            if routing_key in wanted:
                channel.qos.restore_by_tag(tag, leftmost=True)
                restored += 1
    if restored:
        log.warning(
            "took back %d unacknowledged messages of %s from a worker that died",
            restored,
            ", ".join(sorted(wanted)),
        )
    return restored


class TakeBackUnacked(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Consumer step: after the task consumer (re)starts, take back what was left unacked."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        queues = set(getattr(c.app.amqp.queues, "consume_from", None) or ())
        channel = getattr(c.task_consumer, "channel", None)
        own = getattr(getattr(channel, "qos", None), "_delivered", {}) or {}
        try:
            take_back_unacked(c.app, queues, time.time(), mine=list(own))
        except Exception as exc:  # noqa: BLE001 - the visibility timeout still brings them back
            log.warning("could not take back unacknowledged messages: %s", exc)


class RestartOnBrokerLoss(Consumer):  # type: ignore[misc]  # Celery is untyped
    """The worker's consumer (``worker_consumer``): a lost broker connection ends the worker."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        log.error("lost the connection to the broker (%s); exiting for a fresh worker", exc)
        # Cold shutdown: the pool's tasks cannot acknowledge on this connection anyway.
        os.kill(os.getpid(), signal.SIGQUIT)
        super().on_connection_error_after_connected(exc)
