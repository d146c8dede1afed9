"""A worker that (re)connects takes back its queues' messages that a dead worker held.

Redis hands an unacknowledged message back only after the visibility timeout (an
hour, so that long countdowns are never redelivered early). A worker killed with
its prefetched messages would leave them there that long: provisioning steps,
audit batches, escalation actions. So a starting worker puts back on its queues
every message of theirs that was delivered before it started and never
acknowledged. Where other workers of the same queue still run, a message one of
them is working on runs twice; every state-changing task is idempotent (late ack
means it can run twice anyway), which is what makes this safe.

Redis hands a message over with BRPOP and kombu records it as unacknowledged in a second
command: a Redis that dies between the two has already removed the message from its
queue, and the record never lands. Such a message is written to a spool file in the
data directory before the worker gives up on the connection, and the next worker of its
queue puts it back (a message whose record did land after all runs twice, which late
acknowledgement allows anyway).

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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps
from celery.worker.consumer import Consumer
from kombu.transport import redis as redis_transport

from config.settings import get_settings

log = logging.getLogger("fleet.workers")


_SPOOLED = "_fleet_spools_lost_deliveries"


def spool_lost_deliveries(directory: Path) -> None:
    """In this process, a delivery whose unacknowledged record cannot be written to Redis
    is kept in ``directory`` for the next worker of its queue (:func:`take_back_unacked`)."""
    original: Callable[..., Any] = redis_transport.QoS.append
    if getattr(original, _SPOOLED, False):
        return

    def append(self: Any, message: Any, delivery_tag: str) -> Any:
        try:
            return original(self, message, delivery_tag)
        except Exception:
            info = message.delivery_info
            spool_delivery(
                directory, delivery_tag, message._raw, info["exchange"], info["routing_key"]
            )
            raise

    setattr(append, _SPOOLED, True)
    redis_transport.QoS.append = append


def spool_delivery(
    directory: Path, delivery_tag: str, raw: Any, exchange: str, routing_key: str
) -> Path:
    """One delivery on disk, durably, in the shape of kombu's unacknowledged record."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{delivery_tag}.json"
    partial = target.with_suffix(".partial")
    with partial.open("w", encoding="utf-8") as out:
        json.dump([raw, exchange, routing_key], out)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(target)
    log.error(
        "Redis went away before delivery %s of %s was recorded; kept in %s for the next worker",
        delivery_tag,
        routing_key,
        target,
    )
    return target


def _restore_spooled(channel: Any, directory: Path | None, wanted: set[str]) -> int:
    if directory is None or not directory.is_dir():
        return 0
    restored = 0
    for path in sorted(directory.glob("*.json")):
        try:
            raw, exchange, routing_key = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.error("spooled delivery %s unreadable (%s); left for an operator", path, exc)
            continue
        if routing_key not in wanted:
            continue
        with channel.conn_or_acquire() as client, client.pipeline() as pipe:
            channel._do_restore_message(raw, exchange, routing_key, pipe, leftmost=True)
            pipe.execute()
        path.unlink()
        restored += 1
    return restored


def take_back_unacked(
    celery_app: Celery,
    queues: Iterable[str],
    delivered_before: float,
    mine: Iterable[str] = (),
    spool: Path | None = None,
) -> int:
    """Restore to their queues the unacknowledged messages of ``queues`` delivered before
    ``delivered_before`` (epoch seconds), except the delivery tags in ``mine`` (this
    connection's own), and the deliveries of theirs kept in ``spool``; returns how many."""
    wanted, own = set(queues), set(mine)
    restored = 0
    with celery_app.connection_for_write() as conn:
        channel = conn.default_channel
        if not hasattr(channel, "unacked_key"):  # not the Redis transport
            return 0
        restored += _restore_spooled(channel, spool, wanted)
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


def spool_dir() -> Path:
    return get_settings().data_dir / "spool"


class TakeBackUnacked(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Consumer step: after the task consumer (re)starts, take back what was left unacked."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        queues = set(getattr(c.app.amqp.queues, "consume_from", None) or ())
        channel = getattr(c.task_consumer, "channel", None)
        own = getattr(getattr(channel, "qos", None), "_delivered", {}) or {}
        try:
            take_back_unacked(c.app, queues, time.time(), mine=list(own), spool=spool_dir())
        except Exception as exc:  # noqa: BLE001 - the visibility timeout still brings them back
            log.warning("could not take back unacknowledged messages: %s", exc)


class RestartOnBrokerLoss(Consumer):  # type: ignore[misc]  # Celery is untyped
    """The worker's consumer (``worker_consumer``): a lost broker connection ends the worker."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        log.error("lost the connection to the broker (%s); exiting for a fresh worker", exc)
        # Cold shutdown: the pool's tasks cannot acknowledge on this connection anyway.
        os.kill(os.getpid(), signal.SIGQUIT)
        super().on_connection_error_after_connected(exc)
