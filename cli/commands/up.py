"""`fleet up`: the whole system on one machine, stopped cleanly by Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path
from types import FrameType

import click

from cli.common import config_errors_exit, settings_for_cli
from config.settings import Settings
from stack.processes import (
    StartError,
    Supervisor,
    api_argv,
    beat_argv,
    child_env,
    flower_argv,
    flower_env,
    migrate_database,
    port_open,
    start_redis,
    start_sandbox,
    start_worker,
)
from workers.queues import ALL_QUEUES


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signum)


def _check_ports_free(settings: Settings) -> None:
    wanted = [
        ("sandbox", settings.sandbox.host, settings.sandbox.port),
        ("flower", settings.flower.host, settings.flower.port),
        ("api", settings.api.host, settings.api.port),
    ]
    if not settings.redis.url:
        wanted.append(("embedded redis", "127.0.0.1", settings.redis.embedded_port))
    for name, host, port in wanted:
        if port_open(host, port):
            raise StartError(
                f"port {host}:{port} for {name} is already in use (is another `fleet up` running?)"
            )


def _safe_url(url: str) -> str:
    return url.split("@")[-1] if "@" in url else url


def _submit_demo(settings: Settings, manifest_path: Path) -> str:
    """Send the demo manifest the way any other system would: a Celery message."""
    import yaml  # type: ignore[import-untyped]

    from workers.app import create_producer

    job_id = uuid.uuid4().hex
    app = create_producer(settings)
    app.send_task(
        "provisioning.provision_fleet",
        kwargs={
            "manifest": yaml.safe_load(manifest_path.read_text()),
            "job_id": job_id,
            "submitted_by": "demo",
        },
        task_id=job_id,
    )
    return job_id


def run_up(
    settings: Settings, *, agents: int | None, concurrency: int, demo_manifest: Path | None = None
) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_dir = settings.data_dir.resolve() / "logs"
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    sup = Supervisor(log_dir=log_dir)
    try:
        _check_ports_free(settings)
        if settings.redis.url:
            click.echo(f"redis     {settings.redis_url} (configured)")
        else:
            start_redis(sup, settings.redis.embedded_port, settings.data_dir.resolve() / "redis")
            click.echo(f"redis     {settings.redis_url} (embedded)")
        migrate_database(settings)
        click.echo(f"database  {_safe_url(settings.sqlalchemy_url)} (schema up to date)")
        start_sandbox(sup, settings, agents)
        click.echo(f"sandbox   {settings.gateway_url}")
        for queue in ALL_QUEUES:
            start_worker(sup, settings, queue, concurrency)
        click.echo(f"workers   one per queue: {', '.join(q.value for q in ALL_QUEUES)}")
        sup.start("beat", beat_argv(settings), env=child_env(settings))
        fl = settings.flower
        sup.start(
            "flower",
            flower_argv(settings),
            env=flower_env(settings),
            ready=lambda: port_open(fl.host, fl.port),
            timeout_s=60,
        )
        click.echo(
            f"flower    http://{fl.host}:{fl.port}  (user {fl.user!r}, password from "
            "FLEET_FLOWER__PASSWORD)"
        )
        api = settings.api
        sup.start(
            "api",
            api_argv(settings),
            env=child_env(settings),
            ready=lambda: port_open(api.host, api.port),
            timeout_s=60,
        )
        click.echo(
            f"api       http://{api.host}:{api.port}/docs  (bearer token from FLEET_API__TOKEN)"
        )
        click.echo(f"logs      {log_dir}")
        if demo_manifest is not None:
            job_id = _submit_demo(settings, demo_manifest)
            click.echo(
                f"demo      provisioning {demo_manifest.name} as job {job_id}: watch it in Flower, "
                f"or GET /api/v1/provisioning-jobs/{job_id}"
            )
        click.echo("running — press Ctrl-C to stop everything")
        while True:
            dead = sup.dead()
            if dead:
                names = ", ".join(f"{c.name} (status {c.process.returncode})" for c in dead)
                click.echo(
                    f"fleet: stopped because a process exited: {names}; see {log_dir}", err=True
                )
                return 1
            time.sleep(0.5)
    except StartError as exc:
        click.echo(f"fleet: {exc}", err=True)
        return 1
    except (_Stop, KeyboardInterrupt):
        click.echo("stopping…")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan children
        sup.stop_all()
        click.echo("all processes stopped")


@click.command()
@click.option(
    "--demo",
    is_flag=True,
    help="Seed a small simulated fleet and use short cadences "
    "so every queue is busy within a minute.",
)
@click.option(
    "--agents",
    type=int,
    default=None,
    help="Simulated agents seeded in the sandbox "
    "(default: 20 with --demo, else FLEET_SANDBOX__AGENTS).",
)
@click.option(
    "--concurrency",
    type=int,
    default=2,
    show_default=True,
    help="Processes per worker (one worker per queue).",
)
@config_errors_exit
def up(demo: bool, agents: int | None, concurrency: int) -> None:
    """Start the whole system: Redis, sandbox, a worker per queue, beat and Flower.

    Without FLEET_REDIS__URL an embedded Redis-protocol server is started.
    Ctrl-C stops everything.
    """
    from config.settings import PACKAGE_DIR

    if demo:
        # Short cadences so a newcomer sees every queue consumed within a minute.
        os.environ.setdefault("FLEET_SCHEDULE__HEARTBEAT_S", "5")
        os.environ.setdefault("FLEET_SCHEDULE__METRICS_SWEEP_S", "15")
        os.environ.setdefault("FLEET_SCHEDULE__SLA_CHECK_S", "30")
        os.environ.setdefault("FLEET_SCHEDULE__ESCALATION_TICK_S", "5")
        os.environ.setdefault(
            "FLEET_POLICY_FILE", str(PACKAGE_DIR / "defaults" / "demo-policy.yaml")
        )
    settings = settings_for_cli()
    manifest = PACKAGE_DIR / "manifests" / "demo.yaml" if demo else None
    sys.exit(
        run_up(
            settings,
            agents=agents if agents is not None else (20 if demo else None),
            concurrency=concurrency,
            demo_manifest=manifest,
        )
    )
