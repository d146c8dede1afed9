"""`fleet`: run and operate Fleet Commander from a terminal."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from config.errors import ConfigError
from config.settings import Settings, load_settings, reset_settings_cache
from workers.queues import ALL_QUEUES, FleetQueue

F = TypeVar("F", bound=Callable[..., Any])


def settings_for_cli() -> Settings:
    reset_settings_cache()
    return load_settings()


def config_errors_exit(func: F) -> F:
    """A configuration problem is one line on stderr and exit status 2, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"fleet: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Fleet Commander: the control plane for a fleet of AI agents.

    \b
    Start everything locally:   fleet up        (add --demo for a small simulated fleet)
    Check the system:           fleet status
    Run one part on its own:    fleet sandbox | fleet worker QUEUE | fleet beat | fleet flower

    Settings come from FLEET_* environment variables and an optional .env file
    (see `fleet config`); the domain policy from config/defaults/policy.yaml.
    """


@main.command()
@click.option("--demo", is_flag=True, help="Seed a small simulated fleet and use short cadences so every queue is busy within a minute.")
@click.option("--agents", type=int, default=None, help="Simulated agents seeded in the sandbox (default: 20 with --demo, else FLEET_SANDBOX__AGENTS).")
@click.option("--concurrency", type=int, default=2, show_default=True, help="Processes per worker (one worker per queue).")
@config_errors_exit
def up(demo: bool, agents: int | None, concurrency: int) -> None:
    """Start the whole system: Redis, sandbox, a worker per queue, beat and Flower.

    Without FLEET_REDIS__URL an embedded Redis-protocol server is started.
    Ctrl-C stops everything.
    """
    from cli.up import run_up

    if demo:
        # Short cadences so a newcomer sees every queue consumed within a minute.
        os.environ.setdefault("FLEET_SCHEDULE__HEARTBEAT_S", "5")
    settings = settings_for_cli()
    sys.exit(run_up(settings, agents=agents if agents is not None else (20 if demo else None), concurrency=concurrency))


@main.command()
@click.option("--agents", type=int, default=None, help="Simulated agents to seed (default FLEET_SANDBOX__AGENTS).")
@click.option("--port", type=int, default=None, help="Port (default FLEET_SANDBOX__PORT).")
@click.argument("sandbox_args", nargs=-1, type=click.UNPROCESSED)
@config_errors_exit
def sandbox(agents: int | None, port: int | None, sandbox_args: tuple[str, ...]) -> None:
    """Run the local gateway sandbox in the foreground.

    Extra arguments go to the sandbox itself (`fleet sandbox -- --help` lists them).
    """
    from cli.processes import sandbox_argv

    settings = settings_for_cli()
    if port is not None:
        settings = settings.model_copy(update={"sandbox": settings.sandbox.model_copy(update={"port": port})})
    argv = sandbox_argv(settings, agents, sandbox_args)
    os.execv(argv[0], argv)


@main.command()
@click.argument("queue", type=click.Choice([q.value for q in ALL_QUEUES]))
@click.option("--concurrency", type=int, default=None, help="Worker processes (default FLEET_WORKER__CONCURRENCY).")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork", show_default=True)
@config_errors_exit
def worker(queue: str, concurrency: int | None, pool: str) -> None:
    """Run a Celery worker consuming one QUEUE."""
    from cli.processes import worker_argv

    settings = settings_for_cli()
    argv = worker_argv(FleetQueue(queue), concurrency or settings.worker.concurrency, pool, settings.log_level)
    os.execv(argv[0], argv)


@main.command()
@config_errors_exit
def beat() -> None:
    """Run the beat scheduler (exactly one per deployment)."""
    from cli.processes import beat_argv

    settings = settings_for_cli()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    argv = beat_argv(settings)
    os.execv(argv[0], argv)


@main.command()
@config_errors_exit
def flower() -> None:
    """Run Flower, behind basic auth from FLEET_FLOWER__USER / FLEET_FLOWER__PASSWORD."""
    from cli.processes import flower_argv, flower_env

    settings = settings_for_cli()
    argv = flower_argv(settings)
    os.execve(argv[0], argv, {**os.environ, **flower_env(settings)})


@main.command()
@config_errors_exit
def status() -> None:
    """Show each queue's depth and when a worker last answered its heartbeat."""
    import redis

    from fleet.heartbeat import read_heartbeat
    from fleet.hotstate import connect

    settings = settings_for_cli()
    r = connect(settings.redis_url)
    try:
        r.ping()
    except redis.RedisError as exc:
        click.echo(f"fleet: cannot reach Redis at {settings.redis_url}: {exc}", err=True)
        sys.exit(1)
    now = time.time()
    stale_after = settings.schedule.heartbeat_s * 3
    click.echo(f"{'queue':<18} {'depth':>7}  {'last heartbeat':<16} worker")
    unhealthy = 0
    for queue in ALL_QUEUES:
        depth = r.llen(queue.value)
        beat = read_heartbeat(r, queue.value)
        if beat is None:
            age_text, who = "never", "-"
            unhealthy += 1
        else:
            age = now - beat.ran_at
            age_text = f"{age:.0f} s ago" + (" (stale)" if age > stale_after else "")
            unhealthy += age > stale_after
            who = beat.worker
        click.echo(f"{queue.value:<18} {depth:>7}  {age_text:<16} {who}")
    sys.exit(1 if unhealthy else 0)


@main.command("config")
@config_errors_exit
def show_config() -> None:
    """Print the effective settings (secrets masked) and validate the policy file."""
    settings = settings_for_cli()
    click.echo(settings.model_dump_json(indent=2))
    click.echo(f"# policy: {settings.policy_file} ({len(settings.policy.sla_templates)} SLA templates) — valid")


# Command groups that live in their own modules register themselves on `main`.
import cli.bench  # noqa: E402,F401
import cli.provisioning_cmds  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    main()
