"""The relational store: SQLite by default, PostgreSQL in production."""

from fleet.storage.db import Base, create_db_engine, migrate, session_factory

__all__ = ["Base", "create_db_engine", "migrate", "session_factory"]
