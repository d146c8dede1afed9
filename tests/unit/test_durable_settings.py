"""Settings that durability depends on: countdowns inside the visibility timeout, the
embedded Redis's password in its URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import ConfigError
from config.settings import ScheduleSettings, WorkerSettings, load_settings
from stack.processes import ensure_redis_password


def test_a_visibility_timeout_below_a_countdown_is_refused_naming_both() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(worker=WorkerSettings(visibility_timeout_s=2000))
    message = str(refused.value)
    assert "\n" not in message
    assert "FLEET_WORKER__VISIBILITY_TIMEOUT_S (worker.visibility_timeout_s) = 2000 s" in message
    assert "escalation retry cap" in message and "= 3000 s" in message


def test_a_lock_ttl_past_the_visibility_timeout_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"schedule.provisioning_lock_ttl_s .* = 4000 s"):
        load_settings(
            worker=WorkerSettings(visibility_timeout_s=3600),
            schedule=ScheduleSettings(provisioning_lock_ttl_s=4000),
        )


def test_the_defaults_pass() -> None:
    load_settings()


def test_the_embedded_redis_password_is_made_once_and_carried_by_the_url(tmp_path: Path) -> None:
    assert load_settings(data_dir=tmp_path).redis_url == "redis://127.0.0.1:6390/0"
    password = ensure_redis_password(tmp_path)
    assert ensure_redis_password(tmp_path) == password
    assert (tmp_path / "redis" / "password").stat().st_mode & 0o777 == 0o600
    assert load_settings(data_dir=tmp_path).redis_url == f"redis://:{password}@127.0.0.1:6390/0"
