"""`fleet bench audit` and `fleet bench audit-verify`: the audit log's write and check paths.

`bench audit` pushes events through the audit queue into SQLite; its limit is
the same rows (read back from the log it filled) inserted into a fresh database
by a bare SQLAlchemy loop, one transaction per message's worth of rows.
`bench audit-verify` times `fleet audit verify` on a filled log; its limit is a
bare loop over the same rows checking each one's SHA-256 and link to the last.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine, insert, select

from benchmarks.common import limit_fields, workdir
from config.settings import Settings, load_settings
from fleet.audit.events import ApprovalState, Article, AuditEvent, build_event
from fleet.audit.log import AuditLog
from fleet.audit.models import AuditEntry
from fleet.storage.db import create_db_engine, migrate


def bench_events(count: int, fleet: str = "bench") -> list[AuditEvent]:
    """Entries shaped like the provisioning and escalation ones: a few fields, money as strings."""
    actions = (
        "provision_agent",
        "create_wallet",
        "restart_agent",
        "reroute_traffic",
        "freeze_agent",
    )
    return [
        build_event(
            actor="fleet-commander/bench",
            action=actions[i % len(actions)],
            subject=f"seg{i % 4}-{i:04d}-{i * 2654435761 % 2**32:08x}",
            fleet=fleet,
            details={
                "step": i,
                "balance": f"{i % 1000}.{i % 100:02d}",
                "tier": "starter",
                "api_key": "never-stored",
            },
            article=Article.RECORD_KEEPING if i % 3 else Article.HUMAN_OVERSIGHT,
            approval=ApprovalState.NONE,
            trace_id=f"{i:032x}" if i else None,
            span_id=f"{i:016x}" if i else None,
        )
        for i in range(count)
    ]


def payloads(events: list[AuditEvent], batch: int) -> list[list[dict[str, Any]]]:
    return [
        [e.model_dump(mode="json") for e in events[i : i + batch]]
        for i in range(0, len(events), batch)
    ]


def wait_for_entries(log: AuditLog, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while log.head().seq < count:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {log.head().seq} of {count} entries appended after {timeout_s:.0f} s"
            )
        time.sleep(0.05)


def fill_log(settings: Settings, count: int, chunk: int = 5000) -> float:
    """Append count entries directly (no queue); returns the seconds it took."""
    engine = create_db_engine(settings.sqlalchemy_url)
    migrate(engine)
    log = AuditLog.from_settings(settings, engine=engine)
    started = time.perf_counter()
    for start in range(0, count, chunk):
        log.append(bench_events(min(chunk, count - start)))
    engine.dispose()
    return time.perf_counter() - started


def run_audit(
    entries: int, batch: int | None, concurrency: int, pool: str, mirror: bool, keep: str | None
) -> None:
    import yaml

    from config.settings import DEFAULT_POLICY_FILE
    from fleet.audit.verify import verify_log
    from stack.local import local_stack

    with workdir(keep, "fleet-bench-audit-") as base:
        policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
        policy.setdefault("audit", {})["mirror_enabled"] = mirror
        policy_file = base / "policy.yaml"
        policy_file.write_text(yaml.safe_dump(policy))
        with local_stack(base, policy_file=policy_file) as stack:
            batch = batch or stack.settings.policy.audit.batch_size
            stack.start_worker(
                ["audit"],
                concurrency=concurrency,
                pool=pool,
                name="audit",
                extra_env={"FLEET_POLICY_FILE": str(policy_file)},
            )
            app = stack.celery()
            log = AuditLog.from_settings(stack.settings)
            messages = payloads(bench_events(entries), batch)
            click.echo(
                f"{entries} entries in {len(messages)} messages of up to {batch}; "
                f"audit worker: {pool} × {concurrency}; SQLite at {stack.settings.sqlalchemy_url}"
            )
            started = time.perf_counter()
            with app.producer_or_acquire() as producer:
                for message in messages:
                    app.send_task("audit.append_batch", args=(message,), producer=producer)
            sent = time.perf_counter() - started
            wait_for_entries(log, entries, timeout_s=max(60.0, entries / 200))
            wall = time.perf_counter() - started
            report = verify_log(log)
            rate = entries / wall
            click.echo(
                f"sent in {sent:.2f} s; all {entries} appended in {wall:.2f} s; chain "
                f"{report.summary()}"
            )
            limit_s = insert_limit(log.engine, base / "limit.db", batch)
            click.echo(
                f"limit (bare SQLAlchemy inserts, {batch} rows a transaction): {limit_s:.2f} s "
                f"| ratio {wall / limit_s:.2f}"
            )
            click.echo(
                json.dumps(
                    {
                        "entries": entries,
                        "batch": batch,
                        "pool": pool,
                        "concurrency": concurrency,
                        "wall_s": round(wall, 3),
                        "chain_ok": report.ok,
                        "entries_per_s": round(rate),
                        **limit_fields(wall, limit_s),
                    }
                )
            )


def _rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(row)
            for row in conn.execute(select(AuditEntry).order_by(AuditEntry.seq)).mappings()
        ]


def insert_limit(source: Engine, target: Path, batch: int) -> float:
    """Seconds to insert the rows of SOURCE's log into a fresh SQLite database at TARGET,
    BATCH rows a transaction, with nothing else: no chain lock, no hashing, no queue."""
    rows = _rows(source)
    engine = create_db_engine(f"sqlite:///{target}")
    migrate(engine)
    started = time.perf_counter()
    for start in range(0, len(rows), batch):
        with engine.begin() as conn:
            conn.execute(insert(AuditEntry), rows[start : start + batch])
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds


def run_verify(entries: int, keep: str | None) -> None:
    from config.settings import AuditSettings
    from stack.trust import prepare_local_trust

    with workdir(keep, "fleet-bench-verify-") as base:
        data_dir = base / "data"
        data_dir.mkdir()
        settings = prepare_local_trust(
            load_settings(
                data_dir=data_dir,
                database_url=f"sqlite:///{data_dir / 'fleet.db'}",
                audit=AuditSettings(witness_dir=base / "witness"),
            )
        )
        click.echo(f"filling {entries} entries into {settings.sqlalchemy_url} …")
        fill_s = fill_log(settings, entries)
        click.echo(f"filled in {fill_s:.1f} s; running `fleet audit verify`")
        env = {
            **os.environ,
            "FLEET_DATA_DIR": str(data_dir),
            "FLEET_DATABASE_URL": settings.sqlalchemy_url,
            "FLEET_AUDIT__WITNESS_DIR": str(base / "witness"),
        }
        started = time.perf_counter()
        argv = [sys.executable, "-c", "from cli.main import main; main()", "audit", "verify"]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        click.echo(proc.stdout.rstrip())
        if proc.returncode != 0:
            click.echo(proc.stderr.rstrip(), err=True)
        engine = create_db_engine(settings.sqlalchemy_url)
        limit_s, broken = chain_limit(engine)
        engine.dispose()
        click.echo(
            f"limit (bare hash-chain loop, same rows): {limit_s:.2f} s, {broken} broken links "
            f"| ratio {wall / limit_s:.2f}"
        )
        click.echo(
            json.dumps(
                {
                    "entries": entries,
                    "verify_s": round(wall, 2),
                    "exit_status": proc.returncode,
                    **limit_fields(wall, limit_s),
                }
            )
        )


def chain_limit(engine: Engine) -> tuple[float, int]:
    """Seconds for one pass over the log's rows in order, checking each stored body's
    SHA-256 against its hash and its prev_hash against the row before; and the
    rows that failed (0 on an intact log)."""
    columns = (AuditEntry.seq, AuditEntry.hash, AuditEntry.body, AuditEntry.prev_hash)
    sha256 = hashlib.sha256
    broken = 0
    started = time.perf_counter()
    with engine.connect() as conn:
        rows = conn.execution_options(stream_results=True, yield_per=20_000).execute(
            select(*columns).order_by(AuditEntry.chain, AuditEntry.seq)
        )
        prev: str | None = None
        for _seq, digest, body, prev_hash in rows:
            if sha256(body.encode("utf-8")).hexdigest() != digest or (
                prev is not None and prev_hash != prev
            ):
                broken += 1
            prev = digest
    return time.perf_counter() - started, broken
