"""The gateway's event bus as a second witness: a rollback is named from what the outbox
published there, with no witness directory at all, against the sandbox over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.audit.mirror import Outbox
from fleet.audit.verify import ProblemKind, verify_log
from fleet.audit.witness import bus_records
from fleet.gateway import GatewayClient, GatewayConfig
from tests.conftest import SandboxProcess
from tests.support.audit_world import audit_world

pytestmark = pytest.mark.integration


def test_rollback_is_named_against_the_checkpoints_on_the_bus(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    config = GatewayConfig(url=sandbox.gateway_url, admin_key=sandbox.admin_key, max_attempts=1)
    with audit_world(tmp_path) as world, GatewayClient(config) as client:
        world.log.witness = None
        world.append(60)
        run = Outbox(world.log, owner="t").run(client)
        assert run.delivered == 3 and run.pending == 0, run
        assert verify_log(world.log, witnesses=[bus_records(client, "main")]).ok

        world.sql(
            "DELETE FROM audit_entries WHERE seq > 40",
            "DELETE FROM audit_checkpoints WHERE size > 40",
            "UPDATE audit_mirror_state SET delivered_seq = 40",
        )
        world.keep_checkpoint_file_lines(up_to_size=40)
        assert verify_log(world.log).ok, "with nothing outside the database, it passes"

        report = verify_log(world.log, witnesses=[bus_records(client, "main")])
        assert report.problem is not None, report.summary()
        assert (report.problem.kind, report.problem.seq) == (ProblemKind.ROLLED_BACK, 41)
        assert "event bus" in report.problem.message
