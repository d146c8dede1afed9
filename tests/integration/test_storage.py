"""Migrations run on the real databases we support."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from fleet.storage import create_db_engine, migrate
from tests.support.databases import postgres_available, postgres_database, sqlite_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        with sqlite_database(tmp_path) as url:
            yield url
    else:
        if not postgres_available():
            pytest.skip("no PostgreSQL server reachable on 127.0.0.1:5432")
        with postgres_database() as url:
            yield url


def test_migrations_create_every_table_and_are_idempotent(database_url: str) -> None:
    import fleet.storage.models  # noqa: F401
    from fleet.storage.db import Base

    engine = create_db_engine(database_url)
    migrate(engine)
    migrate(engine)  # a second run is a no-op, as on every worker start
    tables = set(sa.inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    engine.dispose()
