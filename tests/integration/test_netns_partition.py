"""Several machines' worth of network: two workers, each in a network namespace of its own,
reach Redis and PostgreSQL in a third over veth pairs; one worker's link is cut in the
middle of a task and restored. Nothing may be lost or doubled, and the time to recover is
printed.

The audit queue is the workload: every entry must land exactly once, in one intact chain.
The namespaces, the veth pairs and their link-local addresses are made by this test and
removed in a finally; the test process itself stays in the root namespace and reaches
both servers through their Unix sockets, so no address outside the namespaces it made is
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
from tests.support.trust import trust_env, trusted
from tests.support.workload import audit_events
from workers.queues import TaskName

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BATCHES = 24
BATCH_SIZE = 250
CUT_S = 4.0
WORKERS = 2


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
class Machine:
    """A worker's own namespace, linked to the services' namespace by a veth pair."""

    namespace: str
    ip: str
    link: str  # its end of the pair
    services_ip: str  # the services' end of the pair

    def run(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def cut(self) -> None:
        _ip("-n", self.namespace, "link", "set", self.link, "down")

    def restore(self) -> None:
        _ip("-n", self.namespace, "link", "set", self.link, "up")


@dataclass
class Network:
    services: str
    machines: list[Machine]

    def in_services(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.services, *argv]

    @property
    def services_ips(self) -> list[str]:
        return [m.services_ip for m in self.machines]


@pytest.fixture
def network() -> Iterator[Network]:
    """The services' namespace and WORKERS machines, each on a /30 of its own."""
    tag = uuid.uuid4().hex[:6]
    # Link-local, and only ever inside the namespaces made here.
    third, base = random.randrange(1, 255), random.randrange(0, 32) * 8
    net = Network(
        services=f"fc-svc-{tag}",
        machines=[
            Machine(
                namespace=f"fc-w{i}-{tag}",
                ip=f"169.254.{third}.{base + 4 * i + 2}",
                link=f"fcw{i}{tag}",
                services_ip=f"169.254.{third}.{base + 4 * i + 1}",
            )
            for i in range(WORKERS)
        ],
    )
    made: list[str] = []
    try:
        for ns in (net.services, *(m.namespace for m in net.machines)):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for i, machine in enumerate(net.machines):
            services_link = f"fcs{i}{tag}"
            _ip(
                *f"link add {services_link} netns {net.services} type veth "
                f"peer name {machine.link} netns {machine.namespace}".split()
            )
            for ns, link, address in (
                (net.services, services_link, machine.services_ip),
                (machine.namespace, machine.link, machine.ip),
            ):
                _ip("-n", ns, "addr", "add", f"{address}/30", "dev", link)
                _ip("-n", ns, "link", "set", link, "up")
        yield net
    finally:
        # Deleting a namespace deletes the veth ends in it, and so the pairs.
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@dataclass
class Servers:
    redis_password: str
    redis_socket_url: str  # what this process uses
    database_socket_url: str
    database_kind: str

    def redis_url(self, machine: Machine) -> str:
        """What a worker uses: the services' end of its own veth pair."""
        return f"redis://:{self.redis_password}@{machine.services_ip}:6379/0"

    def database_url(self, machine: Machine) -> str:
        if self.database_kind != "postgresql":
            return self.database_socket_url  # SQLite: the shared file system
        return f"postgresql+psycopg://postgres@{machine.services_ip}:5432/fleet"


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
        "bind": " ".join(network.services_ips),
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
            redis_local = f"redis+socket://:{password}@{redis_socket}"
            found = _postgres_binaries()
            if found is None:
                url = f"sqlite:///{base / 'fleet.db'}"
                yield Servers(password, redis_local, url, "sqlite (no PostgreSQL here)")
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
                    for machine in network.machines:
                        hba.write(f"host all all {machine.ip}/32 trust\n")
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
                            ",".join(network.services_ips),
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
                    password,
                    redis_local,
                    f"postgresql+psycopg://postgres@/fleet?host={sockets}",
                    "postgresql",
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _flags(options: dict[str, str]) -> list[str]:
    """--name value..., a value of several words giving several arguments (bind)."""
    words = []
    for name, value in options.items():
        words += [f"--{name}", *(value.split(" ") if value else [value])]
    return words


def _connects(engine: sa.Engine) -> bool:
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False


def test_worker_cut_off_mid_task_loses_and_doubles_nothing(
    network: Network, servers: Servers, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"  # the workers run as root: the test's own tmp dir will do
    data_dir.mkdir()
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    policy["audit"]["mirror_enabled"] = False  # no gateway in this picture
    policy_file = data_dir / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    # The signing key made once, before any worker starts: workers never make one.
    trust = trust_env(data_dir)
    settings = trusted(
        load_settings(
            data_dir=data_dir, database_url=servers.database_socket_url, policy_file=policy_file
        )
    )
    engine = create_db_engine(servers.database_socket_url)
    migrate(engine)
    log = AuditLog.from_settings(settings, engine=engine)
    events = audit_events(BATCHES * BATCH_SIZE, fleet="netns")
    app = producer_app(servers.redis_socket_url)
    victim = network.machines[0]
    try:
        with Supervisor(log_dir=tmp_path) as sup:
            workers = []
            for i, machine in enumerate(network.machines):
                env = {
                    "FLEET_REDIS__URL": servers.redis_url(machine),
                    "FLEET_DATABASE_URL": servers.database_url(machine),
                    "FLEET_DATA_DIR": str(data_dir),
                    "FLEET_POLICY_FILE": str(policy_file),
                    **trust,
                }
                argv = worker_argv("audit", 1, "prefork", hostname=f"netns-audit-{i}@%h")
                workers.append(sup.start(f"worker-{i}", machine.run(argv), env=env))
            logs = [tmp_path / f"worker-{i}.log" for i in range(len(workers))]
            wait_until(
                lambda: all(
                    w.alive() and b"ready." in f.read_bytes()
                    for w, f in zip(workers, logs, strict=True)
                ),
                timeout_s=60,
            )
            for start in range(0, len(events), BATCH_SIZE):
                batch = [e.model_dump(mode="json") for e in events[start : start + BATCH_SIZE]]
                app.send_task(TaskName.AUDIT_APPEND_BATCH, args=(batch,))

            # Mid-task: the victim holds an open transaction on the far side of its link.
            wait_until(lambda: _worker_in_transaction(engine, victim.ip), timeout_s=60)
            before_cut = log.head().seq
            cut_at = time.monotonic()
            victim.cut()
            # What was already on the wire may land; after a second nothing crosses.
            time.sleep(1.0)
            victim_settled = _succeeded(logs[0])
            time.sleep(CUT_S - 1.0)
            victim_during_cut = _succeeded(logs[0])
            assert victim_during_cut == victim_settled, "the cut worker finished a task: not cut"
            during_cut = log.head().seq
            restored_at = time.monotonic()
            victim.restore()
            wait_until(lambda: log.head().seq >= len(events), timeout_s=180, interval_s=0.1)
            all_done_s = time.monotonic() - restored_at
            since_cut_s = time.monotonic() - cut_at
            # The task the cut caught finishes once the link is back: it was not dropped.
            wait_until(lambda: _succeeded(logs[0]) > victim_during_cut, timeout_s=30)
            assert all(w.alive() for w in workers), f"a worker died; see {tmp_path}"
            # Anything still to come would be a double: let redeliveries show themselves.
            time.sleep(2)
            per_worker = [_succeeded(f) for f in logs]
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
        f"\nnetns partition ({servers.database_kind}, {len(workers)} workers in namespaces of "
        f"their own): {len(events)} audit entries in {BATCHES} messages; worker 0's link cut "
        f"for {CUT_S:.0f} s mid-transaction at entry {before_cut}; entries landed during the "
        f"cut {during_cut - before_cut} (by the other worker); all in {all_done_s:.2f} s "
        f"after the link came back "
        f"({since_cut_s:.1f} s from the cut); batches per worker {per_worker}; entries "
        f"{entries}, distinct {distinct}, chain {'intact' if report.ok else 'BROKEN'}"
    )
    assert before_cut < len(events), "the cut came after the work was done"
    assert entries == len(events), f"{len(events) - entries} entries lost (or doubled)"
    assert distinct == len(events)
    assert sum(per_worker) >= BATCHES and all(per_worker), per_worker
    assert report.ok and report.entries == len(events), report.summary()


def _succeeded(log_file: Path) -> int:
    """Tasks a worker has finished, from its own log."""
    return log_file.read_text().count("succeeded in")


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
