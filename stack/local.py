"""A private copy of the whole system in a directory: Redis, sandbox, database, workers.

The benchmarks and the integration tests run the system this way: real
processes on free ports, nothing shared with a `fleet up` that may be running.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from config.settings import RedisSettings, SandboxSettings, Settings, load_settings
from stack.processes import (
    Managed,
    Supervisor,
    child_env,
    free_port,
    migrate_database,
    start_redis,
    start_sandbox,
    worker_argv,
)
from stack.trust import prepare_local_trust


@dataclass
class Stack:
    settings: Settings
    sup: Supervisor
    base_dir: Path
    _sandbox: Any = None

    @property
    def env(self) -> dict[str, str]:
        env = child_env(self.settings)
        env["FLEET_DATABASE_URL"] = self.settings.sqlalchemy_url
        return env

    def start_worker(
        self,
        queues: Sequence[str],
        *,
        concurrency: int = 2,
        pool: str = "prefork",
        name: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> Managed:
        name = name or "worker-" + "-".join(queues)
        argv = worker_argv(
            ",".join(queues), concurrency, pool, loglevel="INFO", hostname=f"{name}@%h"
        )
        child = self.sup.start(name, argv, env={**self.env, **(extra_env or {})})
        log_file = self.base_dir / "logs" / f"{name}.log"
        _wait(
            lambda: log_file.exists() and b"ready." in log_file.read_bytes(),
            child,
            60,
            f"{name} not ready; see {log_file}",
        )
        return child

    def celery(self) -> Celery:
        """A producer app on this stack's Redis, with our routing."""
        from workers.app import create_producer

        return create_producer(self.settings)

    def sandbox(self) -> Any:
        """The sandbox's admin client (one per stack, closed with it)."""
        if self._sandbox is None:
            from sandbox.control import SandboxControl

            self._sandbox = SandboxControl(
                f"http://{self.settings.sandbox.host}:{self.settings.sandbox.port}",
                self.settings.gateway.admin_key.get_secret_value(),
            )
        return self._sandbox

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None


def _wait(predicate: Any, child: Managed, timeout_s: float, message: str) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if not child.alive() or time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.05)


@contextmanager
def local_stack(
    base_dir: Path,
    *,
    sandbox_agents: int = 0,
    latency_ms: float = 0.0,
    jitter_ms: float = 0.0,
    sandbox_extra: Sequence[str] = (),
    database_url: str | None = None,
    **overrides: Any,
) -> Iterator[Stack]:
    base_dir.mkdir(parents=True, exist_ok=True)
    redis_port = free_port()
    # As `fleet up` runs it: append-only, behind a password.
    redis_password = secrets.token_urlsafe(16)
    settings = load_settings(
        data_dir=base_dir,
        database_url=database_url or f"sqlite:///{base_dir / 'fleet.db'}",
        redis=RedisSettings(url=f"redis://:{redis_password}@127.0.0.1:{redis_port}/0"),
        sandbox=SandboxSettings(
            port=free_port(), latency_ms=latency_ms, latency_jitter_ms=jitter_ms
        ),
        **overrides,
    )
    settings = prepare_local_trust(settings)
    # The witness a first start puts beside base_dir goes with it (one given is the caller's).
    own_witness = settings.audit.witness_dir if "audit" not in overrides else None
    migrate_database(settings)
    with Supervisor(log_dir=base_dir / "logs") as sup:
        start_redis(sup, redis_port, base_dir / "redis", redis_password)
        start_sandbox(sup, settings, sandbox_agents, sandbox_extra)
        stack = Stack(settings, sup, base_dir)
        try:
            yield stack
        finally:
            stack.close()
            if own_witness is not None:
                shutil.rmtree(own_witness, ignore_errors=True)
