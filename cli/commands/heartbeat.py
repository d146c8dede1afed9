"""`fleet heartbeat`: what an agent's runtime runs to report in (signed heartbeats on the bus).

Run by the agent, with the agent's own secrets: its gateway API key and its
identity key (``fleet keys identity AGENT`` exports it). The operator's admin
key is never used here. Metrics come from ``--metrics`` (JSON) or from
``--metrics-file``, which ``run`` reads again before every beat so the agent
can keep it current.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from cli.commands.keys import read_secret
from cli.common import config_errors_exit, settings_for_cli
from fleet.gateway.errors import GatewayError
from fleet.monitoring.heartbeats import HeartbeatMetrics, load_private_key
from fleet.monitoring.publisher import HeartbeatPublisher, MetricsSource, Published, parse_metrics

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _metrics_source(metrics: str | None, metrics_file: Path | None) -> MetricsSource:
    if metrics is not None and metrics_file is not None:
        raise click.UsageError("give --metrics or --metrics-file, not both")
    if metrics_file is not None:
        path = metrics_file

        def from_file() -> HeartbeatMetrics:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc.strerror}") from None
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None
            return parse_metrics(data)

        from_file()  # a bad file is refused before the first beat, not logged at every one
        return from_file
    try:
        fixed = parse_metrics(json.loads(metrics or "{}"))
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc.msg}", param_hint="--metrics") from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--metrics") from None
    return lambda: fixed


@contextlib.contextmanager
def _publisher(
    agent_id: str,
    api_key: str,
    identity_key: str,
    interval_s: float | None,
    gateway_url: str | None,
) -> Iterator[HeartbeatPublisher]:
    from fleet.gateway import GatewayClient, GatewayConfig, StaticKeyRing

    settings = settings_for_cli()
    try:
        key = load_private_key(read_secret(identity_key, "--identity-key"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--identity-key") from None
    # The agent's own key only: a heartbeat must never go out as the operator.
    config = dataclasses.replace(
        GatewayConfig.from_settings(settings),
        url=(gateway_url or settings.gateway_url).rstrip("/"),
        admin_key=None,
    )
    ring = StaticKeyRing(agents={agent_id: read_secret(api_key, "--api-key")})
    interval = interval_s or settings.policy.monitoring.heartbeat_interval_s
    with GatewayClient(config, ring) as client:
        yield HeartbeatPublisher(client, agent_id, key, interval_s=interval)


def _agent_options(fn: Any) -> Any:
    options = [
        click.argument("agent_id"),
        click.option(
            "--api-key",
            required=True,
            metavar="KEY_OR_@FILE",
            help="The agent's own gateway key, or @FILE (@- for stdin).",
        ),
        click.option(
            "--identity-key",
            required=True,
            metavar="HEX_OR_@FILE",
            help="The agent's Ed25519 identity key (fleet keys identity AGENT), or @FILE.",
        ),
        click.option("--metrics", default=None, help="JSON, e.g. '{\"latency_p99_ms\": 820}'."),
        click.option(
            "--metrics-file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="A JSON file of metrics, read again before every beat.",
        ),
        click.option(
            "--interval-s",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="The cadence (default: the policy's monitoring.heartbeat_interval_s).",
        ),
        click.option("--gateway-url", default=None, help="Default: the configured gateway."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _line(published: Published) -> str:
    hb = published.heartbeat
    return f"{hb.agent_id}: heartbeat seq {hb.seq} published as event {published.event_id}"


@click.group("heartbeat")
def heartbeat_group() -> None:
    """Publish an agent's signed heartbeats on the gateway's event bus (run by the agent)."""


@heartbeat_group.command("send")
@_agent_options
@config_errors_exit
def send(
    agent_id: str,
    api_key: str,
    identity_key: str,
    metrics: str | None,
    metrics_file: Path | None,
    interval_s: float | None,
    gateway_url: str | None,
) -> None:
    """Publish one heartbeat of AGENT_ID now."""
    source = _metrics_source(metrics, metrics_file)
    try:
        with _publisher(agent_id, api_key, identity_key, interval_s, gateway_url) as publisher:
            click.echo(_line(publisher.publish(source())))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except GatewayError as exc:
        raise click.ClickException(f"the gateway refused the heartbeat: {exc}") from None


@heartbeat_group.command("run")
@_agent_options
@click.option("--beats", type=click.IntRange(min=1), default=None, help="Stop after this many.")
@config_errors_exit
def run(
    agent_id: str,
    api_key: str,
    identity_key: str,
    metrics: str | None,
    metrics_file: Path | None,
    interval_s: float | None,
    gateway_url: str | None,
    beats: int | None,
) -> None:
    """Publish AGENT_ID's heartbeats at the cadence until stopped (Ctrl-C or SIGTERM)."""
    source = _metrics_source(metrics, metrics_file)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    try:
        with _publisher(agent_id, api_key, identity_key, interval_s, gateway_url) as publisher:
            summary = publisher.run(
                source, stop=stop, beats=beats, on_beat=lambda p: click.echo(_line(p))
            )
    except GatewayError as exc:
        raise click.ClickException(f"the gateway does not accept {agent_id}'s key: {exc}") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(
        f"{agent_id}: {summary.sent} sent, {summary.failed} failed, {summary.skipped} skipped"
    )
