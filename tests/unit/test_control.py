"""The kill switch's rules (fleet/control): what a pause holds, freezes and their gated release,
and the API's refusals. Redis is fakeredis, the gateway a recorder; the database is SQLite."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, cast

import fakeredis
import pytest

from fleet import audit, control
from fleet.approvals import NotApproved, SelfApproval
from fleet.control import ControlDeps, LoopPaused, LoopState
from fleet.escalation.actions import ActionDeps, run_action
from fleet.gateway import Gateway
from fleet.hotstate import Lease
from fleet.provisioning import pipeline
from fleet.storage import wallets
from fleet.storage.records import Agent, AgentStatus
from fleet.work.service import WorkDeps, run_tasks
from fleet.work.submission import parse_submission
from tests.conftest import RecordingRuntime
from tests.support.fleet_rows import insert_agents
from tests.support.identities import PASSWORD, signed_in

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


class RecordingGateway:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def run(self, op: Any) -> Any:
        self.calls.append((op.name, op.agent_id))
        return None


@pytest.fixture
def world(runtime: RecordingRuntime) -> Iterator[tuple[RecordingRuntime, RecordingGateway]]:
    gateway = RecordingGateway()
    r = fakeredis.FakeRedis(decode_responses=True)
    policy = runtime.settings.policy.control
    runtime._built["control"] = ControlDeps(
        runtime.sessions,
        r,
        runtime.approvals,
        runtime.clock,
        cast(Gateway, gateway),
        policy,
        runtime.send,
    )
    runtime._built["loop_state"] = LoopState(r, runtime.sessions, policy)
    yield runtime, gateway


def _wallet(rt: RecordingRuntime, agent_id: str) -> dict[str, Any] | None:
    with rt.sessions() as s:
        agent = s.get(Agent, agent_id)
        assert agent is not None
        return wallets.state(agent)


def _agents(rt: RecordingRuntime, fleet: str, n: int) -> list[str]:
    ids = [f"{fleet}-{i:04d}-aaaaaaaa" for i in range(n)]
    insert_agents(rt.sessions, ids, fleet=fleet, policy=rt.settings.policy)
    return ids


def _status(rt: RecordingRuntime, agent_id: str) -> str:
    with rt.sessions() as s:
        agent = s.get(Agent, agent_id)
        assert agent is not None
        return str(agent.status)


def test_a_pause_holds_escalation_dispatch_and_provisioning_until_resumed(
    world: tuple[RecordingRuntime, RecordingGateway],
) -> None:
    rt, _ = world
    state = rt.loop_state
    assert state() is None
    state.check()  # not paused: nothing raised
    control.pause_loop(rt.control, "user:alice", "incident")
    assert "user:alice" in (state() or "")

    # Escalation: waits without claiming (no episode needed: nothing is read).
    deps = ActionDeps(
        rt.sessions,
        rt.settings.policy,
        rt.clock,
        cast(Gateway, None),
        cast(Any, None),
        rt.approvals,
        paused=state,
    )
    outcome = run_action(deps, "no-such-episode", 4, worker="w")
    assert outcome.status == "retry"
    assert outcome.retry_in == rt.settings.policy.control.recheck_s

    # Work dispatch: refused before any task is claimed.
    r = fakeredis.FakeRedis(decode_responses=True)
    work = cast(Any, WorkDeps)(
        redis=r, policy=rt.settings.policy, settings=rt.settings.work, directory=None,
        loop=None, delivery=None, measured=None, a2a_base=None, check_loop=state.check,
    )  # fmt: skip
    sub = parse_submission(
        {
            "type": "summarise",
            "capabilities": ["support"],
            "estimated_tokens": 10,
            "payer": {"kind": "agent", "id": "a"},
            "idempotency_key": "k1",
        }
    )
    with pytest.raises(LoopPaused):
        run_tasks(work, [(sub, "t1")])
    assert r.keys("*") == []

    # Provisioning: no step, not even the lock.
    locked: list[str] = []

    def lock(name: str, ttl: float) -> AbstractContextManager[Lease | None]:
        locked.append(name)
        raise AssertionError("the lock must not be taken while paused")

    prov = cast(Any, pipeline.ProvisioningDeps)(
        sessions=rt.sessions, gateway=None, policy=rt.settings.policy, vault=None,
        clock=rt.clock, audit=audit.record, lock=lock, check_loop=state.check,
    )  # fmt: skip
    with pytest.raises(LoopPaused):
        pipeline.provision_agent(prov, "any")
    assert locked == []

    # Resuming needs someone else's approval.
    gate = control.request_resume(rt.control, "user:alice", "over")
    assert (
        control.resume_loop(rt.control, "user:alice", reason="over")["status"]
        == "awaiting-approval"
    )
    assert gate.request_id is not None
    with pytest.raises(SelfApproval):
        rt.approvals.approve(gate.request_id, "user:alice")
    with pytest.raises(NotApproved):
        control.resume_loop(rt.control, "user:alice", approval_id=gate.request_id)
    assert state() is not None
    rt.approvals.approve(gate.request_id, "user:bob")
    out = control.resume_loop(rt.control, "user:alice", approval_id=gate.request_id)
    assert out == {"status": "resumed", "approvers": ["user:bob"]}
    assert state() is None
    assert run_action(deps, "no-such-episode", 4, worker="w").status == "missing"
    actions = [(e.actor, e.action) for e in rt.events]
    assert ("user:alice", "control_loop_paused") in actions
    assert ("user:alice", "control_loop_resumed") in actions


def test_a_pause_survives_redis_losing_its_flag(
    world: tuple[RecordingRuntime, RecordingGateway],
) -> None:
    rt, _ = world
    control.pause_loop(rt.control, "user:alice", "incident")
    rt.control.redis.flushall()
    assert rt.loop_state() is None
    control.sync(rt.control)
    assert rt.loop_state() is not None


def test_freezing_a_fleet_pauses_its_agents_and_only_an_approved_release_undoes_it(
    world: tuple[RecordingRuntime, RecordingGateway],
) -> None:
    rt, gateway = world
    ids = _agents(rt, "red", 3)
    other = _agents(rt, "blue", 1)
    out = control.freeze_fleet(rt.control, "red", "user:alice", "runaway spend")
    assert out["agents"] == 3
    assert {_status(rt, a) for a in ids} == {AgentStatus.PAUSED} and _status(
        rt, other[0]
    ) == "active"
    # The wallets are a worker's: the freeze answers before any gateway call.
    assert gateway.calls == [] and out["wallets"] == "queued"
    sent = [kw for name, kw in rt.sent if name == control.FREEZE_WALLETS_TASK]
    assert sent == [{"fleet": "red", "agents": ids}]
    assert control.freeze_wallets(rt.control, **sent[0])["frozen"] == 3
    assert {(_wallet(rt, a) or {}).get("by") for a in ids} == {"user:alice"}
    assert _wallet(rt, other[0]) is None
    assert sorted(gateway.calls) == sorted(("freeze_wallet", a) for a in ids)
    # Only the freeze's own agents: a message naming another is not obeyed for it.
    gateway.calls.clear()
    control.freeze_wallets(rt.control, "red", [*other, ids[0]])
    assert gateway.calls == [("freeze_wallet", ids[0])]
    with pytest.raises(control.ControlError, match="agents: expected a list"):
        control.freeze_wallets(rt.control, "red", "x")  # type: ignore[arg-type]
    assert rt.loop_state.fleet_frozen("red") and not rt.loop_state.fleet_frozen("blue")
    gate = control.request_fleet_release(rt.control, "red", "user:alice", "fixed")
    assert gate.risk.value == "HIGH" and not gate.may_run and gate.request_id
    with pytest.raises(NotApproved):
        control.release_fleet(rt.control, "red", "user:alice", approval_id=gate.request_id)
    rt.approvals.approve(gate.request_id, "user:bob")
    assert (
        control.release_fleet(rt.control, "red", "user:alice", approval_id=gate.request_id)[
            "agents"
        ]
        == 3
    )
    assert {_status(rt, a) for a in ids} == {AgentStatus.ACTIVE}
    assert ("unfreeze_wallet", ids[0]) in gateway.calls
    assert {(_wallet(rt, a) or {}).get("frozen") for a in ids} == {False}
    assert not rt.loop_state.fleet_frozen("red")
    with pytest.raises(NotApproved):  # claimed once
        control.release_fleet(rt.control, "red", "user:alice", approval_id=gate.request_id)
    # A wallet message arriving after the release freezes nothing.
    gateway.calls.clear()
    assert control.freeze_wallets(rt.control, "red", ids)["status"] == "released"
    assert gateway.calls == []


def test_freezing_one_agent_and_asking_its_release(
    world: tuple[RecordingRuntime, RecordingGateway],
) -> None:
    rt, gateway = world
    [agent] = _agents(rt, "one", 1)
    assert control.freeze_agent(rt.control, agent, "user:alice", "odd spend")["status"] == "frozen"
    assert _status(rt, agent) == AgentStatus.PAUSED and gateway.calls == [("freeze_wallet", agent)]
    assert _wallet(rt, agent) is not None and _wallet(rt, agent)["frozen"] is True
    asked = control.request_agent_release(rt.control, agent, "user:alice", "looked at it")
    view = rt.approvals.get(asked["request_id"])
    assert view.action == "release_agent" and view.requested_by == "user:alice"
    with pytest.raises(control.ControlError, match="agent_id: no agent"):
        control.freeze_agent(rt.control, "ghost", "user:alice", "x")


def test_bad_input_is_named(world: tuple[RecordingRuntime, RecordingGateway]) -> None:
    rt, _ = world
    with pytest.raises(control.ControlError, match="reason: must not be empty"):
        control.pause_loop(rt.control, "user:alice", "  ")
    with pytest.raises(control.ControlError, match="by: who asks"):
        control.pause_loop(rt.control, "", "why")
    with pytest.raises(control.ControlError, match="not paused"):
        control.request_resume(rt.control, "user:alice", "why")
    with pytest.raises(control.ControlError, match="fleet: no agent"):
        control.freeze_fleet(rt.control, "nowhere", "user:alice", "why")


def test_the_api_offers_the_switch_to_operators_only(
    world: tuple[RecordingRuntime, RecordingGateway],
) -> None:
    from fleet.identity import Role
    from web.app import create_api

    rt, _ = world
    with TestClient(create_api(lambda: rt)) as client:
        viewer = signed_in(rt.identities, "vera", Role.VIEWER)
        alice = signed_in(rt.identities, "alice", Role.OPERATOR)
        body = {"reason": "incident"}
        assert client.post("/api/v1/control/pause", json=body, headers=viewer).status_code == 403
        empty = client.post("/api/v1/control/pause", json={"reason": ""}, headers=alice)
        assert empty.status_code == 422 and "reason" in empty.text
        done = client.post("/api/v1/control/pause", json=body, headers=alice)
        assert done.status_code == 200 and done.json()["paused_by"] == "user:alice"
        state = client.get("/api/v1/control", headers=viewer).json()
        assert state["loop"]["paused"] is True
        asked = client.post("/api/v1/control/resume", json=body, headers=alice)
        assert asked.status_code == 202 and asked.json()["risk"] == "HIGH"
        bad = client.post("/api/v1/control/fleets/a b/freeze", json=body, headers=alice)
        assert bad.status_code == 422
        ghost = client.post("/api/v1/control/agents/ghost/freeze", json=body, headers=alice)
        assert ghost.status_code == 404 and "no agent 'ghost'" in ghost.text
        nowhere = client.post("/api/v1/control/fleets/nowhere/freeze", json=body, headers=alice)
        assert nowhere.status_code == 404
        not_frozen = client.post("/api/v1/control/fleets/nowhere/release", json=body, headers=alice)
        assert not_frozen.status_code == 409 and "is not frozen" in not_frozen.text


# --- the console pages (cookie sign-in, CSRF, confirmation step) ---------------------------

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
PRESIGN = re.compile(r'name="presign" value="([^"]+)"')
DIGEST = re.compile(
    r'/console/approvals/([0-9a-f]+)/approve">\s*<input type="hidden" name="csrf" '
    r'value="[0-9a-f]+">\s*<input type="hidden" name="digest" value="([0-9a-f]+)"'
)


def _console(rt: RecordingRuntime, username: str) -> tuple[TestClient, str]:
    from web.app import create_api

    client = TestClient(create_api(lambda: rt), base_url="http://127.0.0.1")
    client.__enter__()
    form = client.get("/console/sign-in")
    presign = PRESIGN.search(form.text)
    assert presign is not None
    client.post(
        "/console/sign-in",
        data={"username": username, "password": PASSWORD, "presign": presign.group(1)},
        follow_redirects=False,
    )
    page = client.get("/console/control")
    assert page.status_code == 200, page.text
    csrf = CSRF.search(page.text)
    assert csrf is not None
    return client, csrf.group(1)


def test_console_kill_switch_confirms_then_acts_and_a_second_person_approves(
    world: tuple[RecordingRuntime, RecordingGateway],
) -> None:
    from fleet.identity import Role

    rt, _ = world
    rt.identities.add_user("vera", Role.VIEWER, PASSWORD)
    rt.identities.add_user("alice", Role.APPROVER, PASSWORD)
    rt.identities.add_user("bob", Role.APPROVER, PASSWORD)
    viewer, vcsrf = _console(rt, "vera")
    assert "Pause the control loop" not in viewer.get("/console/control").text
    refused = viewer.post("/console/control/pause", data={"csrf": vcsrf, "reason": "x"})
    assert refused.status_code == 403 and rt.loop_state() is None

    alice, acsrf = _console(rt, "alice")
    asked = alice.post("/console/control/pause", data={"csrf": acsrf, "reason": "incident"})
    assert asked.status_code == 200 and "Confirm: Pause the control loop" in asked.text
    assert rt.loop_state() is None  # the confirmation step did nothing
    no_reason = alice.post("/console/control/pause", data={"csrf": acsrf, "confirm": "yes"})
    assert no_reason.status_code == 422 and "reason: say why" in no_reason.text
    stale = alice.post(
        "/console/control/pause", data={"csrf": "0" * 64, "reason": "x", "confirm": "yes"}
    )
    assert stale.status_code == 403 and rt.loop_state() is None
    done = alice.post(
        "/console/control/pause", data={"csrf": acsrf, "reason": "incident", "confirm": "yes"}
    )
    assert done.status_code == 200 and "Paused" in done.text
    assert "user:alice" in (rt.loop_state() or "")
    alice.post("/console/control/resume", data={"csrf": acsrf, "reason": "over", "confirm": "yes"})
    inbox = alice.get("/console/approvals").text
    assert "resume_control_loop" in inbox and "You raised this request" in inbox
    assert DIGEST.search(inbox) is None  # no approve button for the one who asked

    bob, bcsrf = _console(rt, "bob")
    found = DIGEST.search(bob.get("/console/approvals").text)
    assert found is not None
    rid, digest = found.groups()
    voted = bob.post(f"/console/approvals/{rid}/approve", data={"csrf": bcsrf, "digest": digest})
    assert voted.status_code == 200 and "now approved" in voted.text
    assert rt.approvals.get(rid).votes[0].approver == "user:bob"
    wrong = alice.post(f"/console/approvals/{rid}/approve", data={"csrf": acsrf, "digest": digest})
    assert "NotPending" in wrong.text or "SelfApproval" in wrong.text
    assert bob.get("/console/audit").status_code == 200


def test_console_provisioning_validates_before_sending_and_money_renders(
    world: tuple[RecordingRuntime, RecordingGateway],
) -> None:
    from fleet.identity import Role

    rt, _ = world
    rt.identities.add_user("otto", Role.OPERATOR, PASSWORD)
    client, csrf = _console(rt, "otto")
    bad = client.post(
        "/console/provisioning/validate",
        data={"csrf": csrf, "manifest": "fleet: demo\nenvironment: nowhere\nagents: []\n"},
    )
    assert bad.status_code == 422 and "<code>environment" in bad.text
    assert rt.sent == []  # nothing was sent
    good = client.post(
        "/console/provisioning/validate",
        data={
            "csrf": csrf,
            "manifest": "fleet: demo\nenvironment: staging\nagents:\n"
            "  - {id_prefix: sup, count: 2, tier: free, initial_balance: '1.00',"
            " sla_template: standard-support, capabilities: [support]}\n",
        },
    )
    assert good.status_code == 200, good.text
    assert "Provision 2 agents" in good.text and rt.sent == []
    money = client.get("/console/money")
    assert money.status_code == 200 and "Model mix today" in money.text
    assert client.get("/console/provisioning").status_code == 200
