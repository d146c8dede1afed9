"""Alembic environment: always handed a connection by fleet.storage.db.migrate."""

from __future__ import annotations

from alembic import context

import fleet.storage.models  # noqa: F401  (registers every table on Base.metadata)
from fleet.storage.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
