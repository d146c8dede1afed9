"""Demo secrets in production: start-up refuses each, with one line naming the setting."""

from __future__ import annotations

import pytest

from config.errors import ConfigError
from config.settings import load_settings

STRONG = {
    "FLEET_API__TOKEN": "t" * 40,
    "FLEET_FLOWER__PASSWORD": "f" * 24,
    "FLEET_SECRETS_KEY": "k" * 44,
    "FLEET_GATEWAY__ADMIN_KEY": "g" * 32,
}


def _load(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    load_settings()


@pytest.mark.parametrize("name", sorted(STRONG))
def test_a_default_secret_in_production_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    env = {**STRONG, "FLEET_ENVIRONMENT": "production"}
    del env[name]  # left at the repository's default
    with pytest.raises(ConfigError) as refused:
        _load(monkeypatch, **env)
    message = str(refused.value)
    assert name in message and "\n" not in message


def test_a_short_secret_is_refused_and_strong_ones_start(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="FLEET_API__TOKEN is shorter"):
        _load(monkeypatch, **{**STRONG, "FLEET_ENVIRONMENT": "staging", "FLEET_API__TOKEN": "abc"})
    _load(monkeypatch, **{**STRONG, "FLEET_ENVIRONMENT": "production"})


def test_binding_beyond_loopback_is_strict_even_in_the_demo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _load(monkeypatch, FLEET_ENVIRONMENT="demo")  # loopback demo: its defaults are fine
    with pytest.raises(ConfigError, match="FLEET_API__TOKEN.*beyond loopback"):
        _load(monkeypatch, FLEET_ENVIRONMENT="demo", FLEET_API__HOST="0.0.0.0")
    with pytest.raises(ConfigError, match="FLEET_FLOWER__PASSWORD"):
        _load(
            monkeypatch,
            FLEET_API__TOKEN="t" * 40,
            FLEET_FLOWER__HOST="0.0.0.0",
        )


def test_a_remote_redis_without_a_password_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**STRONG, "FLEET_ENVIRONMENT": "production"}
    with pytest.raises(ConfigError, match="FLEET_REDIS__URL points at redis.internal without"):
        _load(monkeypatch, **env, FLEET_REDIS__URL="redis://redis.internal:6379/0")
    _load(monkeypatch, **env, FLEET_REDIS__URL=f"redis://:{'p' * 24}@redis.internal:6379/0")
    _load(monkeypatch, **env, FLEET_REDIS__URL="redis://127.0.0.1:6379/0")


def test_the_api_token_can_be_switched_off_and_children_inherit_that(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stack.processes import child_env

    monkeypatch.setenv("FLEET_ENVIRONMENT", "production")
    for name, value in STRONG.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FLEET_API__TOKEN", "")
    assert load_settings().api.token is None  # empty: no deployment-wide token, not a short one
    monkeypatch.delenv("FLEET_API__TOKEN")
    monkeypatch.setenv("FLEET_ENVIRONMENT", "local")
    settings = load_settings()
    off = settings.model_copy(update={"api": settings.api.model_copy(update={"token": None})})
    assert child_env(off)["FLEET_API__TOKEN"] == ""
