"""`fleet up`: the whole system on one machine, stopped cleanly by Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from cli.common import config_errors_exit, settings_for_cli
from config.settings import Settings
from stack.processes import (
    RestartPolicy,
    StartError,
    Supervisor,
    api_argv,
    beat_argv,
    child_env,
    ensure_redis_password,
    flower_argv,
    flower_env,
    migrate_database,
    port_open,
    start_redis,
    start_sandbox,
    start_worker,
    stream_argv,
)
from workers.queues import ALL_QUEUES, TaskName

if TYPE_CHECKING:
    from fleet.provisioning.manifest import FleetManifest
    from fleet.runtime import Runtime
    from sandbox.control import SandboxControl
    from stack.bootstrap import DemoOperator
    from stack.demo_credentials import DemoCredentials
    from stack.demo_traffic import DemoTraffic


# How often the demo's operator looks for agents waiting for a key.
DEMO_OPERATOR_EVERY_S = 2.0
# How often the demo's callers send a task to each manifest group.
DEMO_TRAFFIC_EVERY_S = 20.0


class _Stop(BaseException):
    """Ctrl-C or SIGTERM during start-up. A BaseException, as KeyboardInterrupt is: code
    that catches ``Exception`` around a gateway call must not swallow it."""


class _StopSignal:
    """Raises _Stop while the stack starts; once it runs, only notes the signal, which
    the supervising loop reads between passes: a signal that lands inside a library call
    would otherwise unwind it halfway, locks held, and hang the shutdown."""

    def __init__(self) -> None:
        self.running = False
        self.received: int | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        if not self.running:
            raise _Stop(signum)
        self.received = signum


def _check_ports_free(settings: Settings, *, sandbox: bool) -> None:
    wanted = [
        ("flower", settings.flower.host, settings.flower.port),
        ("api", settings.api.host, settings.api.port),
    ]
    if sandbox:
        wanted.append(("sandbox", settings.sandbox.host, settings.sandbox.port))
    if not settings.redis.url:
        wanted.append(("embedded redis", "127.0.0.1", settings.redis.embedded_port))
    for name, host, port in wanted:
        if port_open(host, port):
            raise StartError(
                f"port {host}:{port} for {name} is already in use (is another `fleet up` running?)"
            )


def console_url(settings: Settings) -> str:
    """The web console's address: the API's, under /console/."""
    host = settings.api.host
    shown = "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host
    return f"http://{shown}:{settings.api.port}/console/"


def _safe_url(url: str) -> str:
    return url.split("@")[-1] if "@" in url else url


def _submit(rt: Runtime, manifest_path: Path) -> tuple[str, FleetManifest]:
    """Send a manifest the way any other system would: recorded, then a Celery message."""
    from fleet.provisioning import pipeline
    from fleet.provisioning.manifest import ManifestError, parse_manifest_text

    try:
        parsed = parse_manifest_text(manifest_path.read_text(encoding="utf-8"), rt.settings.policy)
    except OSError as exc:
        raise StartError(f"cannot read {manifest_path}: {exc.strerror}") from None
    except ManifestError as exc:
        raise StartError(f"{manifest_path}: " + "; ".join(exc.problems)) from None
    data = parsed.model_dump(mode="json")
    job_id = uuid.uuid4().hex
    try:
        pipeline.queue_job(rt.provisioning, data, job_id, submitted_by="fleet-up")
    except pipeline.ProvisioningFrozen as exc:
        raise StartError(str(exc)) from None
    rt.send(
        [
            (
                TaskName.PROVISION_FLEET,
                {"manifest": data, "job_id": job_id, "submitted_by": "fleet-up"},
            )
        ]
    )
    return job_id, parsed


def _demo_operator(rt: Runtime, settings: Settings) -> tuple[DemoOperator, SandboxControl]:
    from cli.commands import keys
    from sandbox.control import SandboxControl
    from stack.bootstrap import DemoOperator

    control = SandboxControl(settings.gateway_url, settings.gateway.admin_key.get_secret_value())
    return (
        DemoOperator(
            rt,
            control.mint_key,
            lambda agent, key, by: keys.import_key(rt, agent, key, by),
            hand_identity_key=control.hand_identity_key,
        ),
        control,
    )


def _demo_traffic(rt: Runtime, manifest: FleetManifest) -> DemoTraffic | None:
    from sqlalchemy import select

    from fleet.storage.records import Agent, AgentStatus
    from stack.demo_traffic import DemoTraffic, callers_of

    callers = callers_of(manifest)
    if not callers:
        return None

    def ready() -> bool:
        with rt.sessions() as s:
            found = s.execute(
                select(Agent.agent_id)
                .where(Agent.fleet == manifest.fleet, Agent.status == AgentStatus.ACTIVE)
                .limit(1)
            ).first()
        return found is not None

    return DemoTraffic(rt.send, rt.redis, manifest.fleet, callers, ready=ready)


def _restart_policy(settings: Settings) -> RestartPolicy:
    sv = settings.supervisor
    return RestartPolicy(
        backoff_s=sv.restart_backoff_s,
        backoff_max_s=sv.restart_backoff_max_s,
        quick_exit_s=sv.quick_exit_s,
        max_quick_exits=sv.max_quick_exits,
    )


class _DeadLetterWatch:
    """Says so on the console when a message lands in the dead letters."""

    EVERY_S = 5.0

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._seen: set[str] | None = None
        self._next = 0.0

    def new(self) -> list[str]:
        from fleet.durability.deadletters import open_letters

        if time.monotonic() < self._next:
            return []
        self._next = time.monotonic() + self.EVERY_S
        try:
            letters = open_letters(self._rt.sessions, limit=1000)
        except Exception:  # noqa: BLE001 - the database restarting is no reason to stop
            return []
        seen, self._seen = self._seen, {x.letter_id for x in letters}
        if seen is None:
            return [f"{len(letters)} open dead letters (`fleet dlq list`)"] if letters else []
        return [
            f"{x.task_name}[{x.task_id}] delivered {x.deliveries} times without finishing: "
            f"dead letter {x.letter_id} (`fleet dlq list`, `fleet dlq replay`)"
            for x in letters
            if x.letter_id not in seen
        ]


def run_up(
    settings: Settings,
    *,
    agents: int | None,
    concurrency: int,
    manifest: Path | None = None,
    demo: bool = False,
    demo_credentials: DemoCredentials | None = None,
    traffic: bool = False,
) -> int:
    """Start everything; against the sandbox unless FLEET_GATEWAY__BASE_URL names a gateway.

    demo: on the sandbox, agents waiting for a key get one from its control API
    (the operator's tooling, which a real gateway keeps to its operator).
    traffic: with demo, the demo's callers send the manifest's groups work
    (stack.demo_traffic).
    """
    # Imported here: every `fleet` command imports this module, few start the stack.
    from kombu.exceptions import KombuError
    from redis import RedisError
    from sqlalchemy.exc import SQLAlchemyError

    from fleet.gateway.errors import GatewayError
    from stack.bootstrap import ensure_system_agents
    from stack.trust import prepare_local_trust
    from workers.app import create_producer
    from workers.runtime import celery_runtime

    real_gateway = settings.gateway.base_url is not None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings = prepare_local_trust(settings)
    log_dir = settings.data_dir.resolve() / "logs"
    stop = _StopSignal()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    sup = Supervisor(log_dir=log_dir)
    rt: Runtime | None = None
    control: SandboxControl | None = None
    try:
        _check_ports_free(settings, sandbox=not real_gateway)
        # First: the one address a person needs (it answers once the api line below shows).
        click.echo(f"console   {console_url(settings)}  (sign in with a `fleet users` account)")
        if settings.redis.url:
            click.echo(f"redis     {settings.redis_url} (configured)")
        else:
            redis_dir = settings.data_dir.resolve() / "redis"
            password = ensure_redis_password(settings.data_dir.resolve())
            start_redis(sup, settings.redis.embedded_port, redis_dir, password)
            click.echo(
                f"redis     {_safe_url(settings.redis_url)} (embedded, append-only in {redis_dir}, "
                f"password in {redis_dir / 'password'})"
            )
        migrate_database(settings)
        click.echo(f"database  {_safe_url(settings.sqlalchemy_url)} (schema up to date)")
        click.echo(
            f"audit     key {settings.audit.public_key or 'NOT PINNED'}, "
            f"witness {settings.audit.witness_dir or 'none'}"
        )
        if real_gateway:
            click.echo(f"gateway   {settings.gateway_url} (configured: no sandbox)")
        else:
            start_sandbox(sup, settings, agents)
            click.echo(
                f"sandbox   {settings.gateway_url}  (state in "
                f"{settings.data_dir.resolve() / 'sandbox.db'})"
            )
        for queue in ALL_QUEUES:
            start_worker(sup, settings, queue, concurrency)
        click.echo(f"workers   one per queue: {', '.join(q.value for q in ALL_QUEUES)}")
        sup.start("beat", beat_argv(settings), env=child_env(settings))
        sup.start("stream", stream_argv(), env=child_env(settings))
        click.echo("stream    the gateway's event stream → the metrics queue (fleet stream)")
        fl = settings.flower
        sup.start(
            "flower",
            flower_argv(settings),
            env=flower_env(settings),
            ready=lambda: port_open(fl.host, fl.port),
            timeout_s=60,
        )
        flower_password = (
            f"password {fl.password.get_secret_value()}"
            if demo_credentials is not None
            else "password from FLEET_FLOWER__PASSWORD"
        )
        click.echo(f"flower    http://{fl.host}:{fl.port}  (user {fl.user!r}, {flower_password})")
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
        rt = celery_runtime(create_producer(settings), settings)
        rt.install_audit_sink()
        if demo_credentials is not None:
            from stack.demo_credentials import FILE_NAME, ensure_admin

            ensure_admin(demo_credentials, rt.identities)
            click.echo(
                f"sign in   user {demo_credentials.admin_user!r}, password "
                f"{demo_credentials.admin_password}  (`fleet login --username "
                f"{demo_credentials.admin_user}`; all demo credentials in "
                f"{settings.data_dir.resolve() / FILE_NAME})"
            )
        try:
            for agent in ensure_system_agents(rt):
                click.echo(f"{agent.role:<9} {agent.agent_id} at the gateway: {agent.outcome}")
        except GatewayError as exc:
            raise StartError(
                f"cannot set up the treasury and operator agents at {settings.gateway_url}: {exc}"
            ) from None
        operator: DemoOperator | None = None
        demo_traffic: DemoTraffic | None = None
        if demo and not real_gateway:
            operator, control = _demo_operator(rt, settings)
        if manifest is not None:
            job_id, parsed = _submit(rt, manifest)
            click.echo(
                f"manifest  provisioning {manifest.name} as job {job_id}: watch it in Flower, "
                f"or GET /api/v1/provisioning-jobs/{job_id}"
            )
            if operator is not None:
                click.echo(
                    "keys      agents waiting for a key get one from the sandbox's control API "
                    "(the operator's tooling, in the demo only); each agent's identity key goes "
                    "to its runtime in the sandbox, as `fleet keys identity` exports it"
                )
            else:
                click.echo(
                    "keys      agents of pro groups wait for `fleet keys import AGENT KEY "
                    "--by NAME`; `fleet keys waiting` lists them"
                )
            if operator is not None and traffic:
                demo_traffic = _demo_traffic(rt, parsed)
                if demo_traffic is not None:
                    click.echo(
                        f"traffic   the demo's callers send a task to each of "
                        f"{', '.join(c.segment for c in demo_traffic.callers)} every "
                        f"{DEMO_TRAFFIC_EVERY_S:g} s (routing queue) once an agent is active: "
                        "see Money and the FinOps review in the console"
                    )
        click.echo("running — a process that dies is restarted; press Ctrl-C to stop everything")
        restarts = _restart_policy(settings)
        letters = _DeadLetterWatch(rt)
        next_step = next_traffic = 0.0
        stop.running = True
        while stop.received is None:
            for line in sup.tend(restarts):
                click.echo(f"restart   {line}")
            for line in letters.new():
                click.echo(f"dlq       {line}")
            if operator is not None and time.monotonic() >= next_step:
                for key in operator.step():
                    if key.refused:
                        click.echo(f"keys      {key.agent_id}: no {key.tier} key: {key.refused}")
                    else:
                        click.echo(f"keys      {key.agent_id}: {key.tier} key minted and imported")
                for deployed in operator.deploy_identities():
                    if deployed.refused:
                        click.echo(
                            f"identity  {deployed.agent_id}: not deployed: {deployed.refused}"
                        )
                    else:
                        click.echo(
                            f"identity  {deployed.agent_id}: identity key handed to its runtime "
                            "(the sandbox's): it heartbeats, signed"
                        )
                next_step = time.monotonic() + DEMO_OPERATOR_EVERY_S
            if demo_traffic is not None and time.monotonic() >= next_traffic:
                next_traffic = time.monotonic() + DEMO_TRAFFIC_EVERY_S
                try:
                    demo_traffic.step()
                except (RedisError, KombuError, SQLAlchemyError, OSError) as exc:
                    # A store restarting (the supervisor brings it back): the next step.
                    click.echo(f"traffic   not sent this step: {exc}")
            time.sleep(0.5)
        click.echo("stopping…")
        return 0
    except StartError as exc:
        click.echo(f"fleet: {exc}", err=True)
        return 1
    except (_Stop, KeyboardInterrupt):
        click.echo("stopping…")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan children
        if control is not None:
            control.close()
        if rt is not None:
            rt.close()
        sup.stop_all()
        click.echo("all processes stopped")


@click.command()
@click.option(
    "--demo",
    is_flag=True,
    help="Provision the demo manifest with short cadences and the demo policy, so every "
    "queue is busy and an SLA episode can reach tier 4 within a minute or two.",
)
@click.option(
    "--manifest",
    "manifest_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Provision this manifest once everything runs (with --demo: instead of the demo's).",
)
@click.option(
    "--agents",
    type=click.IntRange(min=0),
    default=None,
    help="Simulated agents seeded in the sandbox "
    "(default: 20 with --demo, else FLEET_SANDBOX__AGENTS).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Processes per worker (one worker per queue).",
)
@config_errors_exit
def up(demo: bool, manifest_file: Path | None, agents: int | None, concurrency: int) -> None:
    """Start the whole system: Redis, the sandbox, a worker per queue, beat, Flower, the API.

    Without FLEET_REDIS__URL an embedded Redis-protocol server is started. With
    FLEET_GATEWAY__BASE_URL set no sandbox starts: everything talks to that gateway,
    with FLEET_GATEWAY__ADMIN_KEY. The treasury and operator agents are registered
    there when missing. Ctrl-C stops everything.
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
    demo_credentials = None
    if demo:
        from stack.demo_credentials import apply_to_environment, load_or_create

        demo_credentials = load_or_create(settings.data_dir)
        apply_to_environment(demo_credentials)
        settings = settings_for_cli()
    if settings.gateway.base_url is not None and agents is not None:
        raise click.UsageError(
            "--agents seeds the sandbox; with FLEET_GATEWAY__BASE_URL set no sandbox runs"
        )
    manifest = manifest_file or (PACKAGE_DIR / "manifests" / "demo.yaml" if demo else None)
    sys.exit(
        run_up(
            settings,
            agents=agents if agents is not None else (20 if demo else None),
            concurrency=concurrency,
            manifest=manifest,
            demo=demo,
            demo_credentials=demo_credentials,
            # The demo's callers know the demo manifest's groups; another manifest's
            # fleet gets no work it did not ask for.
            traffic=demo and manifest_file is None,
        )
    )
