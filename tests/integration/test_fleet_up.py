"""`fleet up --demo`, as `make demo` runs it: every queue consumed, the demo manifest
provisioned on the sandbox, Ctrl-C stops everything."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fleet.monitoring.heartbeats import EVENT_TYPE, load_public_key, verify_heartbeat
from stack.parts import wait_until
from stack.processes import free_port
from workers.queues import ALL_QUEUES

pytestmark = pytest.mark.integration


def _children_of(pid: int) -> set[int]:
    """Every process whose parent chain leads to pid (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def test_demo_starts_a_worker_per_queue_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("redis", "sandbox", "flower", "api")}
    env = {
        **os.environ,
        "FLEET_DATA_DIR": str(tmp_path / "var"),
        "FLEET_REDIS__EMBEDDED_PORT": str(ports["redis"]),
        "FLEET_SANDBOX__PORT": str(ports["sandbox"]),
        "FLEET_FLOWER__PORT": str(ports["flower"]),
        "FLEET_API__PORT": str(ports["api"]),
        "FLEET_FLOWER__PASSWORD": "up-test",
    }
    env.pop("FLEET_REDIS__URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--demo", "--concurrency", "1"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        flower = f"http://127.0.0.1:{ports['flower']}"

        def every_queue_consumed() -> bool:
            try:
                workers = httpx.get(
                    f"{flower}/api/workers",
                    params={"refresh": "1"},
                    auth=("admin", "up-test"),
                    timeout=5,
                ).json()
            except (httpx.HTTPError, ValueError):
                return False
            consumed = {
                q["name"] for info in workers.values() for q in info.get("active_queues", [])
            }
            return consumed >= {q.value for q in ALL_QUEUES}

        wait_until(
            every_queue_consumed, timeout_s=180, interval_s=1
        )  # generous: CI machines are shared

        def heartbeats_ran_on_every_queue() -> bool:
            tasks = httpx.get(
                f"{flower}/api/tasks", params={"limit": 500}, auth=("admin", "up-test"), timeout=5
            ).json()
            # Flower lists a task it has only seen started with no name yet.
            names = [(t.get("name") or "", t.get("state")) for t in tasks.values()]
            done = {
                name.rsplit(".heartbeat", 1)[0]
                for name, state in names
                if name.endswith(".heartbeat") and state == "SUCCESS"
            }
            return done >= {q.value for q in ALL_QUEUES}

        wait_until(heartbeats_ran_on_every_queue, timeout_s=120, interval_s=1)

        # The demo manifest is provisioned on the sandbox: its pro agents got their keys
        # from the demo's operator; the treasury and the operator's agent exist there too.
        def statuses() -> dict[str, str]:
            db = tmp_path / "var" / "fleet.db"
            with contextlib.closing(sqlite3.connect(db)) as conn:
                try:
                    return dict(conn.execute("SELECT agent_id, status FROM agents").fetchall())
                except sqlite3.OperationalError:  # schema not there yet
                    return {}

        def demo_provisioned() -> bool:
            found = statuses()
            fleet = [s for a, s in found.items() if a.startswith(("support-", "research-"))]
            # Provisioned: active, or already paused by the demo's short-cadence monitoring
            # (a flaky agent can breach its SLA and reach tier 4 within the wait).
            return len(fleet) == 10 and set(fleet) <= {"active", "paused"}

        wait_until(demo_provisioned, timeout_s=180, interval_s=1)
        found = statuses()
        assert found["fleet-treasury"] == found["fleet-operator"] == "system"
        sandbox = f"http://127.0.0.1:{ports['sandbox']}/_sandbox"
        headers = {"Authorization": "Bearer sandbox-admin-key"}
        research = next(a for a in found if a.startswith("research-"))
        keys = httpx.get(f"{sandbox}/agents/{research}", headers=headers, timeout=5).json()
        assert "pro" in {k["tier"] for k in keys["keys"]}, keys
        # Each demo agent's identity key went to its runtime in the sandbox: the live ones
        # publish heartbeats signed with the key on record, every 10 s (the demo policy).
        db = tmp_path / "var" / "fleet.db"
        with contextlib.closing(sqlite3.connect(db)) as conn:
            recorded = {
                a: json.loads(extra)["public_key"]
                for a, extra in conn.execute("SELECT agent_id, extra FROM agents")
                if a.startswith(("support-", "research-"))
            }
        live = {
            a
            for a in recorded
            if httpx.get(f"{sandbox}/agents/{a}", headers=headers, timeout=5).json()["profile"]
            != "dead"
        }

        def heartbeating() -> set[str]:
            events = httpx.get(
                f"http://127.0.0.1:{ports['sandbox']}/v1/infra/events",
                params={"event_type": EVENT_TYPE, "limit": 1000},
                headers=headers,
                timeout=5,
            ).json()["events"]
            seen = set()
            for event in events:
                if event["source"] in recorded:
                    key = load_public_key(recorded[event["source"]])
                    verify_heartbeat(event["source"], event["payload"], key)
                    seen.add(event["source"])
            return seen

        wait_until(lambda: heartbeating() >= live, timeout_s=60, interval_s=1)
        assert heartbeating() <= live, "dead agents are silent"

        # The demo's callers send the fleet work: tasks completed by its agents, some of
        # them sub-tasks of another (a tree), recorded with their model and cost.
        def demo_work() -> dict[str, int]:
            with contextlib.closing(sqlite3.connect(db)) as conn:
                try:
                    rows = conn.execute(
                        "SELECT parent_task_id IS NOT NULL, count(*) FROM work_tasks "
                        "WHERE state = 'completed' AND fleet = 'demo' AND model IS NOT NULL "
                        "AND agent_id IS NOT NULL GROUP BY 1"
                    ).fetchall()
                except sqlite3.OperationalError:
                    return {}
            return {"sub" if is_sub else "root": n for is_sub, n in rows}

        wait_until(lambda: demo_work().get("sub", 0) >= 1, timeout_s=150, interval_s=2)
        assert demo_work()["root"] >= 1
        # The demo's generated admin signs in with what `fleet up` printed and kept.
        creds = json.loads((tmp_path / "var" / "demo-credentials.json").read_text())
        api = f"http://127.0.0.1:{ports['api']}"
        signed_in = httpx.post(
            f"{api}/api/v1/auth/sessions",
            json={"username": "admin", "password": creds["admin_password"]},
            timeout=10,
        )
        assert signed_in.status_code == 201, signed_in.text
        me = httpx.get(
            f"{api}/api/v1/auth/whoami",
            headers={"Authorization": f"Bearer {signed_in.json()['token']}"},
            timeout=10,
        ).json()
        assert me["principal_id"] == "user:admin" and me["role"] == "admin"
        assert httpx.get(f"{api}/api/v1/approvals", timeout=10).status_code == 401
        children = _children_of(proc.pid)
        assert (
            len(children) >= 12
        )  # redis, sandbox, 8 workers, beat, flower, api (+ pool processes)
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "all processes stopped" in output
    assert f"sign in   user 'admin', password {creds['admin_password']}" in output
    leftovers = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert not leftovers, f"still running after Ctrl-C: {leftovers}"
