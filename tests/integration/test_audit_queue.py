"""The audit queue with real parts: a real Redis, real audit worker processes, the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from config.settings import DEFAULT_POLICY_FILE, load_settings
from fleet.audit.log import AuditLog
from fleet.audit.signing import read_checkpoint_file
from fleet.audit.verify import verify_log
from fleet.hotstate import connect
from fleet.storage.db import create_db_engine, migrate
from stack.parts import celery_worker, producer_app, redis_server, wait_until
from tests.support.trust import trust_env, trusted
from tests.support.workload import audit_events
from workers.queues import FleetQueue
from workers.runtime import AUDIT_IN_FLIGHT, enqueue_audit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[tuple[dict[str, str], AuditLog]]:
    """A database, a data directory and the environment a worker or the CLI needs to use them."""
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    policy["audit"]["mirror_enabled"] = False
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    env = {
        "FLEET_REDIS__URL": redis_url,
        "FLEET_DATABASE_URL": url,
        "FLEET_DATA_DIR": str(tmp_path),
        "FLEET_POLICY_FILE": str(policy_file),
        **trust_env(tmp_path),
    }
    settings = trusted(load_settings(data_dir=tmp_path, database_url=url, policy_file=policy_file))
    engine = create_db_engine(url)
    migrate(engine)
    yield env, AuditLog.from_settings(settings, engine=engine)
    engine.dispose()


def test_entries_pass_through_the_queue_into_one_chain_and_redelivery_adds_nothing(
    redis_url: str, stack: tuple[dict[str, str], AuditLog], tmp_path: Path
) -> None:
    env, log = stack
    events = audit_events(1200)
    with celery_worker(env, [FleetQueue.AUDIT], tmp_path, concurrency=2, name="audit") as (
        sup,
        log_file,
    ):
        app = producer_app(redis_url)
        # Three messages, appended by two processes at once.
        r = connect(redis_url)
        enqueue_audit(app, load_settings().policy.audit.batch_size, r, events)
        app.send_task(
            "audit.append_batch", args=([e.model_dump(mode="json") for e in events[:500]],)
        )  # a redelivery
        wait_until(
            lambda: log_file.read_text().count("audit.append_batch") >= 8, timeout_s=30
        )  # received + succeeded
        wait_until(lambda: log.head().seq >= 1200, timeout_s=30)
        # Appended: the producer's copies of the three messages are let go.
        wait_until(lambda: r.hlen(AUDIT_IN_FLIGHT) == 0, timeout_s=30)
        assert not sup.dead()
    report = verify_log(log)
    assert report.ok and report.entries == 1200, report.summary()
    with log.engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT count(DISTINCT event_id) FROM audit_entries")).scalar()
            == 1200
        )
        secrets = conn.execute(
            sa.text("SELECT count(*) FROM audit_entries WHERE body LIKE '%never-stored%'")
        ).scalar()
    assert secrets == 0, "a key never reaches the log"
    assert [c.size for c in read_checkpoint_file(log.files.checkpoints)] == [
        c.size for c in log.checkpoints()
    ]


def _fleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_fleet_audit_verify_exit_status_and_export_verified_alone(
    stack: tuple[dict[str, str], AuditLog], tmp_path: Path
) -> None:
    env, log = stack
    log.append(audit_events(40))
    ok = _fleet(env, "audit", "verify")
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stdout + ok.stderr

    export = tmp_path / "export.csv"
    exported = _fleet(
        env, "audit", "export", "--since", "2000-01-01", "--format", "csv", "--output", str(export)
    )
    assert exported.returncode == 0, exported.stderr
    public = _fleet(env, "audit", "public-key").stdout.splitlines()[-1].split()[-1]
    alone = _fleet({}, "audit", "verify", "--export", str(export), "--public-key", public)
    assert alone.returncode == 0 and "intact: 40 entries" in alone.stdout, (
        alone.stdout + alone.stderr
    )

    with log.engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER audit_entries_no_update"))
        conn.execute(sa.text("UPDATE audit_entries SET subject = 'someone-else' WHERE seq = 7"))
    bad = _fleet(env, "audit", "verify")
    assert bad.returncode == 1
    assert "entry 7 was edited" in bad.stdout


def test_a_message_lost_from_the_broker_is_sent_again_by_the_next_audit_worker(
    redis_url: str, stack: tuple[dict[str, str], AuditLog], tmp_path: Path
) -> None:
    env, log = stack
    r = connect(redis_url)
    r.delete(AUDIT_IN_FLIGHT)
    events = audit_events(30)
    app = producer_app(redis_url)
    enqueue_audit(app, 10, r, events)
    # What a worker SIGKILLed between Redis's BRPOP and kombu's record leaves: no message.
    assert r.delete(FleetQueue.AUDIT.value) == 1
    with celery_worker(env, [FleetQueue.AUDIT], tmp_path, concurrency=1, name="audit"):
        wait_until(lambda: log.head() is not None and log.head().seq >= 30, timeout_s=60)
        wait_until(lambda: r.hlen(AUDIT_IN_FLIGHT) == 0, timeout_s=30)
    assert log.head().seq == 30, "each entry once"
    app.close()
    r.close()
