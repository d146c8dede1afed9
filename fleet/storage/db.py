"""Engine, sessions and migrations.

SQLite is the default so `make demo` needs nothing installed; it runs in WAL
mode with a busy timeout because several worker processes write to it.
PostgreSQL is the production database (FLEET_DATABASE_URL).
"""

from __future__ import annotations

import fcntl
import functools
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Stable constraint names, so migrations are the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A threads-pool worker runs dozens of tasks at once; each needs a
        # connection of its own rather than a wait in the pool.
        kwargs = {"pool_size": 64, "max_overflow": 64, **kwargs}
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        if path and path != ":memory:":
            _SQLITE_WRITE_LOCKS[engine] = _SqliteWriteLock(path)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=20,
        max_overflow=40,
        connect_args=POSTGRES_CONNECT_ARGS,
        **kwargs,
    )


# A connection to a server that vanished without a reset (a partition, a cut link)
# would otherwise block its task until the time limit: connecting gives up after
# 10 s, an idle connection is probed after 10 s, and data the server never
# acknowledges fails the connection after 30 s. On the server's side, a session whose
# client vanished mid-transaction releases its locks after 30 s, not when (if ever)
# the server notices the client is gone.
POSTGRES_CONNECT_ARGS: dict[str, Any] = {
    "options": "-c idle_in_transaction_session_timeout=30000",
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


# SQLite has one writer at a time, and a writer that finds the file locked
# sleeps in SQLite's busy handler (1, 2, 5, 10 … 100 ms) before trying again.
# Profiled with two provisioning workers of 48 threads each, those sleeps were
# most of the wall time. So writers queue instead: on a Python lock within a
# process and on an flock() of a file beside the database across processes;
# both hand over in microseconds. PostgreSQL needs none of this.
class _SqliteWriteLock:
    def __init__(self, db_path: str) -> None:
        self._thread_lock = threading.Lock()
        self._lock_path = db_path + ".write-lock"
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._fd is None:
                self._fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *_: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


_SQLITE_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, _SqliteWriteLock] = (
    weakref.WeakKeyDictionary()
)


@contextmanager
def write_connection(sessions: sessionmaker[Session]) -> Iterator[Connection]:
    """A Core connection in a transaction: for hot paths where the ORM's unit of
    work costs more than the statement (provisioning's per-step records)."""
    engine = sessions.kw["bind"]
    lock = _SQLITE_WRITE_LOCKS.get(engine)
    with lock if lock is not None else nullcontext(), engine.begin() as conn:
        yield conn


@contextmanager
def write_session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session in a transaction that commits on exit; serialised per process on SQLite."""
    lock = _SQLITE_WRITE_LOCKS.get(sessions.kw["bind"])
    with lock if lock is not None else nullcontext(), sessions.begin() as session:
        yield session


@functools.lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine per URL per process."""
    return create_db_engine(url)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def migrate(engine: Engine, revision: str = "heads") -> None:
    """Bring the schema to `revision` with Alembic (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
