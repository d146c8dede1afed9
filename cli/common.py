"""What every `fleet` command shares: its settings, and config errors as one line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from config.errors import ConfigError
from config.settings import Settings, load_settings, reset_settings_cache

F = TypeVar("F", bound=Callable[..., Any])


def settings_for_cli() -> Settings:
    """The settings, with a local stack's own audit pin, witness and vault key where the
    configuration names none (see stack.trust)."""
    from stack.trust import local_trust

    reset_settings_cache()
    return local_trust(load_settings())


def config_errors_exit(func: F) -> F:
    """A configuration problem is one line on stderr and exit status 2, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"fleet: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def audit_context(settings: Settings) -> tuple[Any, Any]:
    """The audit log and the approvals service on the configured database (schema brought
    up to date)."""
    from fleet.approvals import Approvals
    from fleet.audit.log import AuditLog
    from fleet.clock import SystemClock
    from fleet.storage.db import engine_for, migrate, session_factory

    engine = engine_for(settings.sqlalchemy_url)
    migrate(engine)
    # Decisions are audited through the queue when Redis is up, straight into the log when not.
    from workers.app import app
    from workers.runtime import on_demand

    on_demand(app)

    return AuditLog.from_settings(settings, engine=engine), Approvals(
        session_factory(engine), settings.policy.approvals, clock=SystemClock()
    )
