"""`fleet sandbox`, `fleet worker`, `fleet api`, `fleet beat`, `fleet flower`: one part of the
system in the foreground (each replaces this process)."""

from __future__ import annotations

import os

import click

from cli.common import config_errors_exit, settings_for_cli
from workers.queues import ALL_QUEUES, FleetQueue


@click.command()
@click.option(
    "--agents",
    type=int,
    default=None,
    help="Simulated agents to seed (default FLEET_SANDBOX__AGENTS).",
)
@click.option("--port", type=int, default=None, help="Port (default FLEET_SANDBOX__PORT).")
@click.argument("sandbox_args", nargs=-1, type=click.UNPROCESSED)
@config_errors_exit
def sandbox(agents: int | None, port: int | None, sandbox_args: tuple[str, ...]) -> None:
    """Run the local gateway sandbox in the foreground.

    Extra arguments go to the sandbox itself (`fleet sandbox -- --help` lists them).
    """
    from stack.processes import sandbox_argv

    settings = settings_for_cli()
    if port is not None:
        settings = settings.model_copy(
            update={"sandbox": settings.sandbox.model_copy(update={"port": port})}
        )
    argv = sandbox_argv(settings, agents, sandbox_args)
    os.execv(argv[0], argv)


@click.command()
@click.argument("queue", type=click.Choice([q.value for q in ALL_QUEUES]))
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Worker processes (default FLEET_WORKER__CONCURRENCY).",
)
@click.option(
    "--pool",
    type=click.Choice(["prefork", "threads", "solo"]),
    default="prefork",
    show_default=True,
)
@config_errors_exit
def worker(queue: str, concurrency: int | None, pool: str) -> None:
    """Run a Celery worker consuming one QUEUE."""
    from stack.processes import worker_argv

    settings = settings_for_cli()
    argv = worker_argv(
        FleetQueue(queue), concurrency or settings.worker.concurrency, pool, settings.log_level
    )
    os.execv(argv[0], argv)


@click.command()
@config_errors_exit
def api() -> None:
    """Serve the HTTP API (OpenAPI at /docs) and the web console (/console/) on
    FLEET_API__HOST:FLEET_API__PORT."""
    from cli.commands.up import console_url
    from stack.processes import api_argv

    settings = settings_for_cli()
    click.echo(f"console   {console_url(settings)}", err=True)
    argv = api_argv(settings)
    os.execv(argv[0], argv)


@click.command()
@config_errors_exit
def beat() -> None:
    """Run the beat scheduler: one sends at a time (a lock in Redis); a second one waits."""
    from stack.processes import beat_argv

    settings = settings_for_cli()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    argv = beat_argv(settings)
    os.execv(argv[0], argv)


@click.command()
@config_errors_exit
def flower() -> None:
    """Run Flower, behind basic auth from FLEET_FLOWER__USER / FLEET_FLOWER__PASSWORD."""
    from stack.processes import flower_argv, flower_env

    settings = settings_for_cli()
    argv = flower_argv(settings)
    os.execve(argv[0], argv, {**os.environ, **flower_env(settings)})
