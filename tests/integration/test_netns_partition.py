"""Two machines' worth of network: a worker in its own network namespace reaches Redis and
PostgreSQL in another one over a veth pair; its link is cut in the middle of a task and
restored. Nothing may be lost or doubled, and the time to recover is printed.

The audit queue is the workload: every entry must land exactly once, in one intact chain.
The namespaces, the veth pair and their link-local addresses are made by this test and
removed in a finally; the test process itself stays in the root namespace and reaches
both servers through their Unix sockets, so no address outside the two namespaces is
ever used. Needs root and `ip netns` (CI runs as root); skipped, with the reason,
elsewhere.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from config.settings import DEFAULT_POLICY_FILE, load_settings
from fleet.audit.log import AuditLog
from fleet.audit.verify import verify_log
from fleet.storage.db import create_db_engine, migrate
from stack.parts import producer_app, wait_until
from stack.processes import Supervisor, find_redis_server, worker_argv
from tests.support.workload import audit_events
from workers.queues import TaskName

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BATCHES = 24
BATCH_SIZE = 250
CUT_S = 4.0


def _netns_unavailable() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root for `ip netns add` (CI runs as root)"
    if shutil.which("ip") is None:
        return "no `ip` (iproute2) on PATH"
    probe = f"fcprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_UNAVAILABLE = _netns_unavailable()
if _UNAVAILABLE:
    pytestmark = [pytestmark, pytest.mark.skip(reason=_UNAVAILABLE)]


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr.strip()}"


@dataclass
class Network:
    """Two namespaces, `services` and `worker`, joined by one veth pair."""

    services: str
    worker: str
    services_ip: str
    worker_ip: str
    worker_link: str

    def in_services(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.services, *argv]

    def in_worker(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.worker, *argv]

    def cut(self) -> None:
        _ip("-n", self.worker, "link", "set", self.worker_link, "down")

    def restore(self) -> None:
        _ip("-n", self.worker, "link", "set", self.worker_link, "up")


@pytest.fixture
def network() -> Iterator[Network]:
    tag = uuid.uuid4().hex[:6]
    # Link-local, and only ever inside the two namespaces made here.
    third, fourth = random.randrange(1, 255), random.randrange(0, 64) * 4
    net = Network(
        services=f"fc-svc-{tag}",
        worker=f"fc-wrk-{tag}",
        services_ip=f"169.254.{third}.{fourth + 1}",
        worker_ip=f"169.254.{third}.{fourth + 2}",
        worker_link=f"fcw{tag}",
    )
    services_link = f"fcs{tag}"
    made: list[str] = []
    try:
        for ns in (net.services, net.worker):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip(
            *f"link add {services_link} netns {net.services} type veth "
            f"peer name {net.worker_link} netns {net.worker}".split()
        )
        for ns, link, address in (
            (net.services, services_link, net.services_ip),
            (net.worker, net.worker_link, net.worker_ip),
        ):
            _ip("-n", ns, "addr", "add", f"{address}/30", "dev", link)
            _ip("-n", ns, "link", "set", link, "up")
        yield net
    finally:
        # Deleting a namespace deletes the veth end in it, and so the pair.
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@dataclass
class Servers:
    redis_tcp_url: str  # what the worker uses, across the veth
    redis_socket_url: str  # what this process uses
    database_tcp_url: str
    database_socket_url: str
    database_kind: str


def _postgres_binaries() -> tuple[Path, Path, pwd.struct_passwd] | None:
    """initdb and postgres (on PATH, or Debian's versioned directory) and the user to run
    them as (with setpriv): PostgreSQL refuses to run as root."""
    if shutil.which("setpriv") is None:
        return None
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).parent] if on_path else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        return None
    for bindir in candidates:
        initdb, postgres = bindir / "initdb", bindir / "postgres"
        if os.access(initdb, os.X_OK) and os.access(postgres, os.X_OK):
            return initdb, postgres, user
    return None


@pytest.fixture
def servers(network: Network) -> Iterator[Servers]:
    """Redis and PostgreSQL (SQLite on the shared file system if there is no PostgreSQL
    to start) in the services namespace; sockets in a directory the postgres user can use."""
    base = Path(tempfile.mkdtemp(prefix="fleet-netns-"))
    base.chmod(0o755)
    password = uuid.uuid4().hex
    redis_socket = base / "redis.sock"
    redis_options = {
        "port": "6379",
        "bind": network.services_ip,
        "unixsocket": str(redis_socket),
        "unixsocketperm": "700",
        "requirepass": password,
        "save": "",
        "appendonly": "no",
        "dir": str(base),
    }
    try:
        with Supervisor(log_dir=base / "logs") as sup:
            sup.start(
                "redis",
                network.in_services([find_redis_server(), *_flags(redis_options)]),
                ready=redis_socket.exists,
                timeout_s=15,
            )
            redis_tcp = f"redis://:{password}@{network.services_ip}:6379/0"
            redis_local = f"redis+socket://:{password}@{redis_socket}"
            found = _postgres_binaries()
            if found is None:
                url = f"sqlite:///{base / 'fleet.db'}"
                yield Servers(redis_tcp, redis_local, url, url, "sqlite (no PostgreSQL here)")
            else:
                initdb, postgres, user = found
                pgdata, sockets = base / "pgdata", base / "pgsock"
                for d in (pgdata, sockets):
                    d.mkdir()
                    os.chown(d, user.pw_uid, user.pw_gid)
                as_postgres = [
                    "setpriv",
                    f"--reuid={user.pw_uid}",
                    f"--regid={user.pw_gid}",
                    "--clear-groups",
                ]
                initialised = subprocess.run(
                    [
                        *as_postgres,
                        str(initdb),
                        "-D",
                        str(pgdata),
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "--no-sync",
                    ],
                    capture_output=True,
                    text=True,
                    cwd=base,
                )
                assert initialised.returncode == 0, initialised.stderr
                with open(pgdata / "pg_hba.conf", "a") as hba:
                    hba.write(f"host all all {network.worker_ip}/32 trust\n")
                sup.start(
                    "postgres",
                    network.in_services(
                        [
                            *as_postgres,
                            str(postgres),
                            "-D",
                            str(pgdata),
                            "-k",
                            str(sockets),
                            "-h",
                            network.services_ip,
                            "-p",
                            "5432",
                            "-c",
                            "fsync=off",
                        ]
                    ),
                    ready=lambda: (sockets / ".s.PGSQL.5432").exists(),
                    timeout_s=30,
                )
                admin = sa.create_engine(
                    f"postgresql+psycopg://postgres@/postgres?host={sockets}",
                    isolation_level="AUTOCOMMIT",
                )
                wait_until(lambda: _connects(admin), timeout_s=30)
                with admin.connect() as conn:
                    conn.execute(sa.text("CREATE DATABASE fleet"))
                admin.dispose()
                yield Servers(
                    redis_tcp,
                    redis_local,
                    f"postgresql+psycopg://postgres@{network.services_ip}:5432/fleet",
                    f"postgresql+psycopg://postgres@/fleet?host={sockets}",
                    "postgresql",
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _flags(options: dict[str, str]) -> list[str]:
    return [word for name, value in options.items() for word in (f"--{name}", value)]


def _connects(engine: sa.Engine) -> bool:
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False


def test_worker_cut_off_mid_task_loses_and_doubles_nothing(
    network: Network, servers: Servers, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"  # the worker runs as root: the test's own tmp dir will do
    data_dir.mkdir()
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    policy["audit"]["mirror_enabled"] = False  # no gateway in this picture
    policy_file = data_dir / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    settings = load_settings(
        data_dir=data_dir, database_url=servers.database_socket_url, policy_file=policy_file
    )
    engine = create_db_engine(servers.database_socket_url)
    migrate(engine)
    log = AuditLog.from_settings(settings, engine=engine)
    worker_env = {
        "FLEET_REDIS__URL": servers.redis_tcp_url,
        "FLEET_DATABASE_URL": servers.database_tcp_url,
        "FLEET_DATA_DIR": str(data_dir),
        "FLEET_POLICY_FILE": str(policy_file),
    }
    events = audit_events(BATCHES * BATCH_SIZE, fleet="netns")
    app = producer_app(servers.redis_socket_url)
    try:
        with Supervisor(log_dir=tmp_path) as sup:
            worker = sup.start(
                "worker",
                network.in_worker(worker_argv("audit", 1, "prefork", hostname="netns-audit@%h")),
                env=worker_env,
            )
            log_file = tmp_path / "worker.log"
            wait_until(lambda: worker.alive() and b"ready." in log_file.read_bytes(), timeout_s=60)
            for start in range(0, len(events), BATCH_SIZE):
                batch = [e.model_dump(mode="json") for e in events[start : start + BATCH_SIZE]]
                app.send_task(TaskName.AUDIT_APPEND_BATCH, args=(batch,))

            # Mid-task: the worker holds an open transaction on the far side of the link.
            wait_until(lambda: _worker_in_transaction(engine, network.worker_ip), timeout_s=60)
            before_cut = log.head().seq
            cut_at = time.monotonic()
            network.cut()
            # What was already on the wire may land; after a second nothing crosses.
            time.sleep(1.0)
            settled = log.head().seq
            time.sleep(CUT_S - 1.0)
            during_cut = log.head().seq
            restored_at = time.monotonic()
            network.restore()
            wait_until(lambda: log.head().seq > during_cut, timeout_s=120, interval_s=0.1)
            first_progress_s = time.monotonic() - restored_at
            wait_until(lambda: log.head().seq >= len(events), timeout_s=180, interval_s=0.2)
            all_done_s = time.monotonic() - restored_at
            since_cut_s = time.monotonic() - cut_at
            assert worker.alive(), f"the worker died; see {log_file}"
            # Anything still to come would be a double: let redeliveries show themselves.
            time.sleep(2)
    finally:
        app.close()

    entries = log.head().seq
    with engine.connect() as conn:
        distinct = conn.execute(
            sa.text("SELECT count(DISTINCT event_id) FROM audit_entries")
        ).scalar()
    report = verify_log(log)
    engine.dispose()
    print(
        f"\nnetns partition ({servers.database_kind}): {len(events)} audit entries in "
        f"{BATCHES} messages; link cut for {CUT_S:.0f} s at entry {before_cut} "
        f"(landed during the cut: {during_cut - before_cut}, after its first second: "
        f"{during_cut - settled}); first entry "
        f"{first_progress_s:.2f} s after the link came back, all in {all_done_s:.2f} s "
        f"({since_cut_s:.1f} s from the cut); entries {entries}, distinct "
        f"{distinct}, chain {'intact' if report.ok else 'BROKEN'}"
    )
    assert before_cut < len(events), "the cut came after the work was done"
    assert during_cut == settled, "entries arrived across a cut link: the link is not cut"
    assert during_cut - before_cut <= BATCH_SIZE, "more than the batch in flight got through"
    assert entries == len(events), f"{len(events) - entries} entries lost (or doubled)"
    assert distinct == len(events)
    assert report.ok and report.entries == len(events), report.summary()


def _worker_in_transaction(engine: sa.Engine, worker_ip: str) -> bool:
    """Whether a backend from the worker's address is running a statement or is between
    two of one transaction: the worker is in the middle of a task."""
    if not engine.dialect.name.startswith("postgresql"):
        return True  # SQLite: no server to ask; the queue being full has to do
    with engine.connect() as conn:
        busy = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE client_addr = CAST(:ip AS inet) "
                "AND state IN ('active', 'idle in transaction')"
            ),
            {"ip": worker_ip},
        ).scalar()
    return bool(busy)
