"""`fleet stream`: the gateway event stream's consumer, in the foreground (one per deployment;
a second one stands by)."""

from __future__ import annotations

import asyncio
import logging
import signal

import click

from cli.common import config_errors_exit, settings_for_cli


@click.command("stream")
@config_errors_exit
def stream() -> None:
    """Hand the gateway's heartbeat events to the `metrics` queue until stopped (SIGTERM/Ctrl-C)."""
    from fleet.monitoring.stream_consumer import ConsumerDeps, StreamConsumer
    from workers.app import app
    from workers.queues import TaskName
    from workers.runtime import on_demand

    settings = settings_for_cli()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    rt = on_demand(app)
    consumer = StreamConsumer(
        ConsumerDeps(
            redis=rt.redis,
            sessions=rt.sessions,
            send=rt.send,
            settings=settings.stream,
            gateway_url=settings.gateway_url,
            api_key=settings.gateway.admin_key.get_secret_value(),
            task_name=TaskName.INGEST_HEARTBEATS,
        )
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await consumer.run(stop)

    asyncio.run(run())
    click.echo(f"stream consumer {consumer.instance} stopped after {consumer.handed_on} events")
