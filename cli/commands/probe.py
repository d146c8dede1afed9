"""`fleet probe` (also the console script `fleet-probe`): the health checks of a container
or pod (exit 0 healthy, 1 not).

docker-compose.yml and the Kubernetes manifests run these, so a health check is a command
of ours that the tests can resolve, not a shell one-liner nobody runs. Containers call
`fleet-probe`, which loads only this module: `fleet` loads every command first (about
2.6 s of CPU on the development machine), and a probe runs every minute in every pod.
For the same reason each check imports only what it uses: the HTTP check the standard
library, the broker checks the settings and a bare Celery app rather than the workers'
app and every task module behind it.
"""

from __future__ import annotations

import socket
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from config.settings import Settings

# Spelt out rather than imported from workers.queues, which loads kombu;
# tests/unit/test_deploy.py checks the two agree.
QUEUES = (
    "provisioning",
    "metrics",
    "sla",
    "escalation.tier1",
    "escalation.tier2",
    "escalation.tier3",
    "escalation.tier4",
    "audit",
    "routing",
)


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
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:  # noqa: S310
            status = int(answer.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:  # refused, timed out, unresolvable, bad URL
        _unhealthy(f"{url}: {type(exc).__name__}: {exc}")
    if status >= 500:
        _unhealthy(f"{url}: HTTP {status}")
    click.echo(f"{url}: HTTP {status}")


@probe.command("redis")
@click.option("--timeout", "timeout_s", type=float, default=5.0, show_default=True)
def probe_redis(timeout_s: float) -> None:
    """Healthy when the broker (FLEET_REDIS__URL) answers PING: beat needs nothing else."""
    import redis

    client = redis.Redis.from_url(
        _settings().redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        _unhealthy(f"redis: {exc}")
    finally:
        client.close()
    click.echo("redis: PONG")


@probe.command("worker")
@click.argument("queue", type=click.Choice(QUEUES))
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True)
def probe_worker(queue: str, timeout_s: float) -> None:
    """Healthy when this host's worker for QUEUE answers a ping through the broker.

    `fleet worker QUEUE` names itself QUEUE@<host name>, so the probe asks exactly the
    worker of its own container, not any worker of the queue.
    """
    from celery import Celery

    name = f"{queue}@{socket.gethostname()}"
    # Control messages are JSON, as the workers accept; nothing else of their app matters.
    app = Celery("fleet-probe", broker=_settings().redis_url, set_as_current=False)
    app.conf.accept_content = ["json"]
    try:
        replies = app.control.ping(destination=[name], timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - a broker error is as unhealthy as silence
        _unhealthy(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        app.close()
    if not any(name in reply for reply in replies):
        _unhealthy(f"{name}: no answer within {timeout_s:g} s")
    click.echo(f"{name}: pong")


def _settings() -> Settings:
    """The settings without the policy: a probe needs the broker's address only, and a
    bad policy is the start-up's to report, not a reason to restart a running pod."""
    from pydantic import ValidationError

    from config.errors import describe_validation_error
    from config.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        click.echo(
            "fleet-probe: "
            + describe_validation_error(exc, source="environment", env_prefix="FLEET_"),
            err=True,
        )
        sys.exit(2)


def _unhealthy(reason: str) -> None:
    click.echo(f"unhealthy: {reason}", err=True)
    sys.exit(1)
