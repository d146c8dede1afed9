"""PostgreSQL unreachable mid-provisioning: every connection of every worker dropped
and new ones refused for a few seconds, as clients see a restarting server.

The shared PostgreSQL itself is not restarted (that needs its service manager and
root on a machine others use): a TCP proxy between the workers and it is cut
instead (tests/support/tcp_proxy.py), on a database of the test's own. Skipped
where no PostgreSQL answers on 127.0.0.1:5432.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from config.settings import ScheduleSettings
from fleet.provisioning.pipeline import job_progress
from fleet.storage.db import create_db_engine, session_factory
from stack.local import Stack, local_stack
from stack.parts import wait_until
from tests.chaos.support import report
from tests.support.databases import postgres_available, postgres_database
from tests.support.tcp_proxy import CuttableProxy, cuttable_proxy
from tests.support.workload import fleet_manifest
from workers.queues import TaskName

pytestmark = [
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.skipif(not postgres_available(), reason="no PostgreSQL on 127.0.0.1:5432"),
]

CUT_S = 5.0


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Stack, CuttableProxy]]:
    with postgres_database() as url, cuttable_proxy("127.0.0.1", 5432) as proxy:
        via_proxy = url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
        with local_stack(
            tmp_path,
            latency_ms=20,
            database_url=via_proxy,
            # Longer than the cut: a step's record waits out the database (half the TTL).
            schedule=ScheduleSettings(provisioning_lock_ttl_s=4 * CUT_S),
        ) as st:
            assert httpx.post(
                f"{st.sandbox().url}/v1/register", json={"agent_id": "fleet-treasury"}
            )
            st.start_worker(["provisioning"], concurrency=8, pool="threads", name="provisioning")
            st.start_worker(["audit"], concurrency=1, name="audit")
            yield st, proxy


def test_database_unreachable_mid_provisioning_loses_and_doubles_nothing(
    proxied: tuple[Stack, CuttableProxy],
) -> None:
    stack, proxy = proxied
    total = 30
    direct = stack.settings.sqlalchemy_url.replace(f":{proxy.port}/", ":5432/")
    engine = create_db_engine(direct)  # the test reads past the proxy
    app = stack.celery()
    try:
        done_at_cut, to_done_s, final, duplicated, repeated = _cut_mid_job(
            app, session_factory(engine), stack, proxy, total
        )
    finally:
        # A failure must not leave its connections to be collected in a later test.
        app.close()
        engine.dispose()
    counts = {
        "jobs_lost": int(final.done != total),
        "agents_failed": final.failed,
        "agents_duplicated": duplicated,
        "spends_repeated": repeated,
    }
    report(
        "database unreachable mid-provisioning (PostgreSQL behind a cut proxy)",
        agents=total,
        done_at_cut=done_at_cut,
        cut_s=CUT_S,
        connections_dropped=proxy.dropped,
        connections_refused=proxy.refused,
        restore_to_job_done_s=round(to_done_s, 1),
        **counts,
    )
    assert counts == dict.fromkeys(counts, 0), [
        (a.agent_id, a.status, a.failure_reason) for a in final.agents if a.status != "active"
    ]


def _cut_mid_job(
    app: Any, sessions: Any, stack: Stack, proxy: CuttableProxy, total: int
) -> tuple[int, float, Any, int, int]:
    job_id = uuid.uuid4().hex
    app.send_task(
        TaskName.PROVISION_FLEET,
        kwargs={"manifest": fleet_manifest(total, fleet="dbcut"), "job_id": job_id},
    )

    def progress() -> Any:
        return job_progress(sessions, job_id)

    wait_until(lambda: (p := progress()) is not None and p.done >= 5, timeout_s=120)
    done_at_cut = progress().done
    proxy.cut()
    time.sleep(CUT_S)
    proxy.restore()
    restored_at = time.monotonic()
    wait_until(lambda: progress().pending == 0, timeout_s=180, interval_s=0.2)
    to_done_s = time.monotonic() - restored_at
    final = progress()
    sandbox = stack.sandbox()
    duplicated = sum(len(sandbox.agent(a.agent_id)["keys"]) != 1 for a in final.agents)
    repeated = sum(
        Decimal(sandbox.agent(a.agent_id)["wallet"]["balance"]) != Decimal("25.00")
        for a in final.agents
    )
    return done_at_cut, to_done_s, final, duplicated, repeated
