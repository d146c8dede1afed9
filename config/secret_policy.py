"""No demo secret outside the demo: start-up refuses known default or short secrets.

Outside the relaxed environments (demo, dev, local, test), or whenever the
API or Flower listens beyond loopback, every secret must be set, must not be
one of the values this repository ships, and must be long enough to resist
guessing. The first offence is one line naming the variable.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from config.errors import ConfigError

if TYPE_CHECKING:
    from config.settings import Settings

RELAXED_ENVIRONMENTS = frozenset({"demo", "dev", "local", "test"})

# Every default or example secret this repository ships.
KNOWN_DEFAULTS = frozenset(
    {
        "fleet-demo-token",
        "fleet-demo",
        "change-me-in-production",
        "sandbox-admin-key",
        "admin",
        "password",
        "changeme",
        "secret",
    }
)
MIN_SECRET_LENGTH = 16


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def must_be_strict(settings: Settings) -> bool:
    return (
        settings.environment not in RELAXED_ENVIRONMENTS
        or not is_loopback(settings.api.host)
        or not is_loopback(settings.flower.host)
    )


def _secrets(settings: Settings) -> Iterator[tuple[str, str | None]]:
    token = settings.api.token
    yield "FLEET_API__TOKEN", token.get_secret_value() if token is not None else None
    yield "FLEET_FLOWER__PASSWORD", settings.flower.password.get_secret_value()
    secrets_key = getattr(settings, "secrets_key", None)
    if secrets_key is not None:
        yield "FLEET_SECRETS_KEY", secrets_key.get_secret_value()
    yield "FLEET_GATEWAY__ADMIN_KEY", settings.gateway.admin_key.get_secret_value()


def _problem(name: str, value: str | None) -> str | None:
    if value is None:
        return None  # unset: the feature is off (FLEET_API__TOKEN only)
    if value.strip().lower() in KNOWN_DEFAULTS:
        return f"{name} is a default shipped with Fleet Commander"
    if len(value) < MIN_SECRET_LENGTH:
        return f"{name} is shorter than {MIN_SECRET_LENGTH} characters"
    return None


def _redis_problem(settings: Settings) -> str | None:
    url = settings.redis.url
    if not url:
        return None  # the embedded server listens on loopback only
    parts = urlsplit(url)
    if parts.hostname is None or is_loopback(parts.hostname):
        return None
    if not parts.password:
        return f"FLEET_REDIS__URL points at {parts.hostname} without a password"
    return _problem("FLEET_REDIS__URL's password", parts.password)


def refuse_default_secrets(settings: Settings) -> None:
    """Raise ConfigError naming the first default, short or missing secret, when it matters."""
    if not must_be_strict(settings):
        return
    why = (
        f"environment {settings.environment!r}"
        if settings.environment not in RELAXED_ENVIRONMENTS
        else "a service listening beyond loopback"
    )
    for name, value in _secrets(settings):
        problem = _problem(name, value)
        if problem:
            raise ConfigError(f"{problem}; refused with {why}: set a random secret")
    problem = _redis_problem(settings)
    if problem:
        raise ConfigError(f"{problem}; refused with {why}: use redis://:PASSWORD@host/…")
