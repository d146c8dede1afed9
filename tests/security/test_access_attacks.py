"""The attacks on decisions, replayed: each must fail.

On main, one shared token named the approver in the body, so one person
could approve a CRITICAL request under two names, approve their own request,
or acknowledge an SLA episode as someone else.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.testclient import TestClient

from fleet.approvals.service import action_digest
from fleet.identity import Role
from fleet.sla.models import SlaEpisode
from fleet.storage.db import write_session
from fleet.storage.records import Agent, AgentStatus
from tests.conftest import RecordingRuntime
from tests.support.identities import bearer, signed_in

API_TOKEN = {"Authorization": "Bearer fleet-demo-token"}


def _critical(rt: RecordingRuntime, raised_by: str) -> str:
    gate = rt.approvals.request("delete_data", "fleet:demo", raised_by, reason="erasure")
    assert gate.request_id is not None and gate.request is not None
    assert gate.request.required == 2
    return gate.request_id


def test_one_credential_under_two_names_never_reaches_quorum(
    client: TestClient, runtime: RecordingRuntime
) -> None:
    """The issue's attack: the API token approves as "bob", then as "carol"."""
    rid = _critical(runtime, "mallory")
    for name in ("bob", "carol"):
        named = client.post(
            f"/api/v1/approvals/{rid}/approve", json={"approver": name}, headers=API_TOKEN
        )
        assert named.status_code == 403 and named.json()["error"] == "ActorMismatch"
    # Without a name the token votes as itself, once.
    assert (
        client.post(f"/api/v1/approvals/{rid}/approve", json={}, headers=API_TOKEN).status_code
        == 200
    )
    again = client.post(f"/api/v1/approvals/{rid}/approve", json={}, headers=API_TOKEN)
    assert again.status_code == 409 and again.json()["error"] == "DuplicateVote"
    view = runtime.approvals.get(rid)
    assert view.status.value == "pending" and [v.approver for v in view.votes] == ["api-token"]


def test_two_votes_of_one_session_are_one_vote(
    client: TestClient, runtime: RecordingRuntime
) -> None:
    rid = _critical(runtime, "alice")
    bob = signed_in(runtime.identities, "bob")
    assert client.post(f"/api/v1/approvals/{rid}/approve", json={}, headers=bob).status_code == 200
    second = client.post(f"/api/v1/approvals/{rid}/approve", json={}, headers=bob)
    assert second.status_code == 409
    assert runtime.approvals.get(rid).status.value == "pending"


def test_nobody_approves_a_request_they_raised(
    client: TestClient, runtime: RecordingRuntime
) -> None:
    alice = signed_in(runtime.identities, "alice")
    opened = client.post(
        "/api/v1/release-requests",
        json={"agent_id": "seg0-0001-aaaaaaaa", "reason": "fixed"},
        headers=alice,
    )
    assert opened.status_code == 202
    rid = opened.json()["request"]["request_id"]
    own = client.post(f"/api/v1/approvals/{rid}/approve", json={}, headers=alice)
    assert own.status_code == 403 and own.json()["error"] == "SelfApproval"
    # Naming someone else in the body does not help either.
    spoof = client.post(f"/api/v1/approvals/{rid}/approve", json={"approver": "bob"}, headers=alice)
    assert spoof.status_code == 403
    assert runtime.approvals.get(rid).approvals == 0


def test_a_decision_is_audited_with_its_principal_and_the_digest_of_what_it_decided(
    client: TestClient, runtime: RecordingRuntime
) -> None:
    rid = _critical(runtime, "alice")
    bob = signed_in(runtime.identities, "bob")
    assert client.post(f"/api/v1/approvals/{rid}/approve", json={}, headers=bob).status_code == 200
    [vote] = [e for e in runtime.events if e.action == "approval_vote"]
    assert vote.actor == "user:bob"
    assert vote.details["principal_id"] == "user:bob"
    assert vote.details["principal_role"] == "approver"
    assert vote.details["auth_method"] == "session"
    assert vote.details["action_digest"] == action_digest(runtime.approvals.get(rid), "approve")


def test_a_viewer_cannot_decide_and_a_ci_token_can_only_submit(
    client: TestClient, runtime: RecordingRuntime
) -> None:
    rid = _critical(runtime, "alice")
    viewer = signed_in(runtime.identities, "vera", Role.VIEWER)
    refused = client.post(f"/api/v1/approvals/{rid}/approve", json={}, headers=viewer)
    assert refused.status_code == 403 and "approvals:decide" in refused.json()["detail"]
    token, _ = runtime.identities.add_token("ci-pipeline", ["provisioning:submit"])
    ci = bearer(token)
    assert client.post(f"/api/v1/approvals/{rid}/approve", json={}, headers=ci).status_code == 403
    assert client.get("/api/v1/approvals", headers=ci).status_code == 403
    # It may submit: a manifest reaches validation (and is refused there, not at the door).
    submitted = client.post("/api/v1/provisioning-jobs", json={"fleet": "x"}, headers=ci)
    assert submitted.status_code == 422
    runtime.identities.revoke_token("ci-pipeline")
    assert client.post("/api/v1/provisioning-jobs", json={}, headers=ci).status_code == 401


def test_an_sla_acknowledgement_cannot_be_made_in_someone_elses_name(
    client: TestClient, runtime: RecordingRuntime
) -> None:
    now = datetime.now(UTC)
    with write_session(runtime.sessions) as s:
        s.add(
            Agent(
                agent_id="seg0-0001-aaaaaaaa",
                fleet="demo",
                environment="test",
                id_prefix="seg0",
                tier="standard",
                capabilities=[],
                sla_template="standard-support",
                status=AgentStatus.ACTIVE,
                steps_done=[],
                extra={},
                created_at=now,
                updated_at=now,
            )
        )
        s.flush()
        s.add(
            SlaEpisode(
                episode_id="e" * 32,
                agent_id="seg0-0001-aaaaaaaa",
                fleet="demo",
                state="open",
                open_agent="seg0-0001-aaaaaaaa",
                breached_terms=["uptime_pct"],
                opened_at=now,
                opened_by="sweep",
                last_breach_at=now,
                compliant_streak=0,
                weight_before="1",
            )
        )
    mallory = signed_in(runtime.identities, "mallory", Role.OPERATOR)
    spoof = client.post(
        f"/api/v1/sla/episodes/{'e' * 32}/ack", json={"by": "lead-operator"}, headers=mallory
    )
    assert spoof.status_code == 403 and spoof.json()["error"] == "ActorMismatch"
    assert not [e for e in runtime.events if e.action == "sla_episode_acknowledged"]
    acked = client.post(f"/api/v1/sla/episodes/{'e' * 32}/ack", json={}, headers=mallory)
    assert acked.status_code == 200 and acked.json()["acked_by"] == "user:mallory"
    [entry] = [e for e in runtime.events if e.action == "sla_episode_acknowledged"]
    assert entry.actor == "user:mallory" and entry.details["auth_method"] == "session"


def test_every_api_route_names_the_permission_it_needs(client: TestClient) -> None:
    """Each operation the API serves under /api/ (its OpenAPI document lists them all) is a
    route of web/routes/ that depends on exactly one permission check."""
    import importlib
    import pkgutil

    from fastapi import APIRouter
    from fastapi.routing import APIRoute

    import web.routes

    routes: dict[tuple[str, str], APIRoute] = {}
    for info in pkgutil.iter_modules(web.routes.__path__):
        module = importlib.import_module(f"web.routes.{info.name}")
        for value in vars(module).values():
            if isinstance(value, APIRouter):
                for route in value.routes:
                    if isinstance(route, APIRoute):
                        for method in route.methods:
                            routes[(route.path, method)] = route
    operations = [
        (path, method.upper())
        for path, item in client.get("/openapi.json").json()["paths"].items()
        for method in item
        if path.startswith("/api/")
    ]
    assert len(operations) > 20
    for path, method in operations:
        if (path, method) == ("/api/v1/auth/sessions", "POST"):
            continue  # signing in: the one operation open to anyone
        route = routes[(path, method)]
        checks = [d.call for d in route.dependant.dependencies if hasattr(d.call, "permission")]
        assert len(checks) == 1, f"{method} {path} names no permission"


def test_a_vote_pinned_to_a_digest_counts_only_for_that_action(
    client: TestClient, runtime: RecordingRuntime
) -> None:
    rid = _critical(runtime, "alice")
    bob = signed_in(runtime.identities, "bob")
    shown = client.get(f"/api/v1/approvals/{rid}", headers=bob).json()["action_digests"]
    stale = client.post(
        f"/api/v1/approvals/{rid}/approve", json={"action_digest": "0" * 64}, headers=bob
    )
    assert stale.status_code == 409 and stale.json()["error"] == "DigestMismatch"
    assert runtime.approvals.get(rid).approvals == 0
    pinned = client.post(
        f"/api/v1/approvals/{rid}/approve",
        json={"action_digest": shown["approve"]},
        headers=bob,
    )
    assert pinned.status_code == 200 and pinned.json()["approvals"] == 1
