"""`fleet users` and `fleet tokens`: credentials shown once, stored only as hashes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from tests.conftest import RecordingRuntime


@pytest.fixture
def runner(runtime: RecordingRuntime) -> CliRunner:
    return CliRunner()


def test_users_add_prints_a_generated_password_once_or_reads_one(
    runner: CliRunner, runtime: RecordingRuntime
) -> None:
    added = runner.invoke(main, ["users", "add", "alice", "--role", "approver"])
    assert added.exit_code == 0, added.output
    password = added.output.split("password: ")[1].split()[0]
    assert runtime.identities.sign_in("alice", password).principal.role == "approver"
    own = runner.invoke(
        main,
        ["users", "add", "bob", "--role", "viewer", "--password-stdin"],
        input="a long enough password\n",
    )
    assert own.exit_code == 0 and "password:" not in own.output
    short = runner.invoke(
        main, ["users", "add", "carl", "--role", "viewer", "--password-stdin"], input="short\n"
    )
    assert short.exit_code == 1 and "at least 12 characters" in short.output
    listed = runner.invoke(main, ["users", "list"]).output
    assert "alice" in listed and "approver" in listed and password not in listed
    assert runner.invoke(main, ["users", "disable", "alice"]).exit_code == 0
    assert "disabled" in runner.invoke(main, ["users", "list"]).output


def test_a_ci_token_holds_only_its_scopes(runner: CliRunner, runtime: RecordingRuntime) -> None:
    issued = runner.invoke(main, ["tokens", "add", "ci", "--scope", "provisioning:submit"])
    assert issued.exit_code == 0, issued.output
    token = issued.output.split("token: ")[1].split()[0]
    principal = runtime.identities.authenticate(token)
    assert principal is not None and principal.principal_id == "token:ci"
    assert {p.value for p in principal.permissions} == {"provisioning:submit"}
    refused = runner.invoke(main, ["tokens", "add", "x", "--scope", "identity:admin"])
    assert refused.exit_code == 2
    assert runner.invoke(main, ["tokens", "revoke", "ci"]).exit_code == 0
    assert runtime.identities.authenticate(token) is None


def test_deciding_without_signing_in_is_refused(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_CREDENTIALS_FILE", str(tmp_path / "none.json"))
    monkeypatch.delenv("FLEET_API_TOKEN", raising=False)
    answer = runner.invoke(main, ["approvals", "approve", "abc"])
    assert answer.exit_code == 2 and "fleet login" in answer.output
