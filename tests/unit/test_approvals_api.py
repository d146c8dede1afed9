"""The HTTP endpoints for approvals, the audit log and compliance reports (in-process, SQLite)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

with warnings.catch_warnings():
    # Starlette asks for its own httpx fork; the stock httpx client works the same for these calls.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from fleet import audit
from fleet.audit.export import verify_export
from tests.conftest import RecordingRuntime
from tests.support.identities import signed_in

AUTH = {"Authorization": "Bearer fleet-demo-token"}


@pytest.fixture
def api(
    runtime: RecordingRuntime,
) -> Iterator[tuple[TestClient, list[audit.AuditEvent], RecordingRuntime]]:
    from web.app import create_api

    with TestClient(create_api(lambda: runtime)) as client:
        yield client, runtime.events, runtime


def test_endpoints_need_the_token(
    api: tuple[TestClient, list[audit.AuditEvent], RecordingRuntime],
) -> None:
    client, _, _ = api
    assert client.get("/api/v1/approvals").status_code == 401
    assert client.get("/api/v1/audit/verify").status_code == 401


def test_decisions_over_http_keep_the_four_eyes_rules(
    api: tuple[TestClient, list[audit.AuditEvent], RecordingRuntime],
) -> None:
    client, events, rt = api
    alice, bob, carol, dave = (
        signed_in(rt.identities, name) for name in ("alice", "bob", "carol", "dave")
    )
    gate = rt.approvals.request("delete_data", "fleet:demo", "alice", reason="GDPR erasure")
    rid = gate.request_id
    listed = client.get("/api/v1/approvals", headers=AUTH).json()
    assert [r["request_id"] for r in listed] == [rid] and listed[0]["risk"] == "CRITICAL"

    own = client.post(f"/api/v1/approvals/{rid}/approve", json={}, headers=alice)
    assert own.status_code == 403 and own.json()["error"] == "SelfApproval"
    assert client.post(f"/api/v1/approvals/{rid}/approve", json={}, headers=bob).status_code == 200
    twice = client.post(f"/api/v1/approvals/{rid}/approve", json={}, headers=bob)
    assert twice.status_code == 409 and twice.json()["error"] == "DuplicateVote"
    assert client.get(f"/api/v1/approvals/{rid}", headers=AUTH).json()["status"] == "pending"
    done = client.post(f"/api/v1/approvals/{rid}/approve", json={"comment": "ok"}, headers=carol)
    assert (
        done.status_code == 200
        and done.json()["status"] == "approved"
        and done.json()["approvals"] == 2
    )
    assert [v["approver"] for v in done.json()["votes"]] == ["user:bob", "user:carol"]
    assert client.get("/api/v1/approvals/nope", headers=AUTH).status_code == 404
    assert client.post(f"/api/v1/approvals/{rid}/reject", json={}, headers=dave).status_code == 409
    assert [e.action for e in events].count("approval_vote_refused") == 2

    release = client.post(
        "/api/v1/release-requests",
        headers=dave,
        json={"agent_id": "seg0-0001-aaaaaaaa", "reason": "fixed"},
    )
    assert release.status_code == 202 and release.json()["may_run"] is False
    assert release.json()["request"]["action"] == "release_agent"
    assert release.json()["request"]["requested_by"] == "user:dave"


def test_audit_and_compliance_endpoints(
    api: tuple[TestClient, list[audit.AuditEvent], RecordingRuntime], tmp_path: Path
) -> None:
    client, _, rt = api
    rt.audit_log.append(
        [
            audit.build_event(
                actor="t", action="restart_agent", subject="seg0-0001-aaaaaaaa", details={"i": i}
            )
            for i in range(5)
        ]
    )
    verified = client.get("/api/v1/audit/verify", headers=AUTH).json()
    assert verified["ok"] and verified["entries"] == 5
    exported = client.get("/api/v1/audit/export", params={"format": "jsonl"}, headers=AUTH)
    assert exported.status_code == 200
    path = tmp_path / "export.jsonl"
    path.write_bytes(exported.content)
    key = client.get("/api/v1/audit/public-key", headers=AUTH).json()["public_key"]
    assert verify_export(path, key).ok
    report = client.get(
        "/api/v1/reports/compliance",
        params={"fleet": "demo", "period": "30d"},
        headers=AUTH,
    )
    assert report.status_code == 200 and set(report.json()["articles"]) == {
        "9",
        "11",
        "12",
        "13",
        "14",
        "15",
    }
    page = client.get(
        "/api/v1/reports/compliance",
        params={"fleet": "demo", "period": "30d", "format": "html"},
        headers=AUTH,
    )
    assert page.headers["content-type"].startswith("text/html") and "Art. 14" in page.text
    assert (
        client.get(
            "/api/v1/reports/compliance", params={"fleet": "demo", "period": "soon"}, headers=AUTH
        ).status_code
        == 422
    )
