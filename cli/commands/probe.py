"""`fleet probe`: the health checks of a container or pod (exit 0 healthy, 1 not).

docker-compose.yml and the Kubernetes manifests run these, so a health check is a
command of ours that the tests can resolve, not a shell one-liner nobody runs.
"""

from __future__ import annotations

import socket
import sys

import click

from cli.common import config_errors_exit, settings_for_cli
from workers.queues import ALL_QUEUES


@click.group("probe")
def probe() -> None:
    """Health checks for containers and pods: exit 0 when healthy, 1 (and why) when not."""


@probe.command("http")
@click.argument("url")
@click.option("--timeout", "timeout_s", type=float, default=5.0, show_default=True)
def probe_http(url: str, timeout_s: float) -> None:
    """Healthy when URL answers below 500.

    Flower answers 401 without its password: that still proves it serves.
    """
    import httpx

    try:
        answer = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        _unhealthy(f"{url}: {type(exc).__name__}: {exc}")
    if answer.status_code >= 500:
        _unhealthy(f"{url}: HTTP {answer.status_code}")
    click.echo(f"{url}: HTTP {answer.status_code}")


@probe.command("redis")
@click.option("--timeout", "timeout_s", type=float, default=5.0, show_default=True)
@config_errors_exit
def probe_redis(timeout_s: float) -> None:
    """Healthy when the broker (FLEET_REDIS__URL) answers PING: beat needs nothing else."""
    import redis

    settings = settings_for_cli()
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        _unhealthy(f"redis: {exc}")
    finally:
        client.close()
    click.echo("redis: PONG")


@probe.command("worker")
@click.argument("queue", type=click.Choice([q.value for q in ALL_QUEUES]))
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True)
@config_errors_exit
def probe_worker(queue: str, timeout_s: float) -> None:
    """Healthy when this host's worker for QUEUE answers a ping through the broker.

    `fleet worker QUEUE` names itself QUEUE@<host name>, so the probe asks exactly the
    worker of its own container, not any worker of the queue.
    """
    from workers.app import create_producer

    settings = settings_for_cli()
    name = f"{queue}@{socket.gethostname()}"
    app = create_producer(settings)
    try:
        replies = app.control.ping(destination=[name], timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - a broker error is as unhealthy as silence
        _unhealthy(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        app.close()
    if not any(name in reply for reply in replies):
        _unhealthy(f"{name}: no answer within {timeout_s:g} s")
    click.echo(f"{name}: pong")


def _unhealthy(reason: str) -> None:
    click.echo(f"unhealthy: {reason}", err=True)
    sys.exit(1)
