"""Signing in, sessions and what they are stored as."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from fleet.clock import ManualClock
from fleet.identity import Identities, Role
from stack.demo_credentials import load_or_create
from tests.conftest import RecordingRuntime
from tests.support.identities import PASSWORD, bearer


def test_sign_in_gives_a_short_lived_token_stored_only_as_its_digest(
    client: TestClient, runtime: RecordingRuntime
) -> None:
    runtime.identities.add_user("alice", Role.OPERATOR, PASSWORD)
    wrong = client.post("/api/v1/auth/sessions", json={"username": "alice", "password": "nope"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "SignInFailed"
    issued = client.post("/api/v1/auth/sessions", json={"username": "alice", "password": PASSWORD})
    assert issued.status_code == 201
    token = issued.json()["token"]
    me = client.get("/api/v1/auth/whoami", headers=bearer(token)).json()
    assert me["principal_id"] == "user:alice" and me["role"] == "operator"
    with runtime.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT token_digest FROM identity_sessions")).scalars().all()
        hashes = conn.execute(sa.text("SELECT password_hash FROM identity_users")).scalars().all()
    assert token not in stored and len(stored) == 1
    assert hashes[0].startswith("$argon2id$") and PASSWORD not in hashes[0]
    assert client.delete("/api/v1/auth/sessions/current", headers=bearer(token)).status_code == 204
    assert client.get("/api/v1/auth/whoami", headers=bearer(token)).status_code == 401


def test_an_expired_session_or_a_disabled_account_is_refused(
    runtime: RecordingRuntime,
) -> None:
    clock = ManualClock(runtime.clock.now())
    identities = Identities(runtime.sessions, clock, session_ttl_s=60)
    identities.add_user("bob", Role.APPROVER, PASSWORD)
    token = identities.sign_in("bob", PASSWORD).token
    assert identities.authenticate(token) is not None
    clock.advance(61)
    assert identities.authenticate(token) is None
    fresh = identities.sign_in("bob", PASSWORD).token
    identities.set_disabled("bob")
    assert identities.authenticate(fresh) is None


def test_the_demo_generates_its_credentials_once_and_keeps_them_private(tmp_path: Path) -> None:
    first = load_or_create(tmp_path)
    again = load_or_create(tmp_path)
    assert first == again
    assert first.api_token != "fleet-demo-token" and len(first.admin_password) >= 16
    assert (tmp_path / "demo-credentials.json").stat().st_mode & 0o777 == 0o600
    assert load_or_create(tmp_path / "other") != first


def test_metrics_are_rendered_at_most_once_per_cache_window(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet.monitoring import prom

    renders: list[int] = []
    monkeypatch.setattr(prom, "render", lambda *a, **k: renders.append(1) or b"# one\n")
    headers = {"Authorization": "Bearer fleet-demo-token"}
    for _ in range(5):
        assert client.get("/metrics", headers=headers).text == "# one\n"
    assert len(renders) == 1
