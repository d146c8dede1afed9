"""Workloads for `fleet bench audit` and `fleet bench audit-verify`."""

from __future__ import annotations

import time
from typing import Any

from config.settings import Settings
from fleet.audit.events import ApprovalState, Article, AuditEvent, build_event
from fleet.audit.log import AuditLog


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
                "tier": "standard",
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
    from fleet.storage.db import create_db_engine, migrate

    engine = create_db_engine(settings.sqlalchemy_url)
    migrate(engine)
    log = AuditLog.from_settings(settings, engine=engine)
    started = time.perf_counter()
    for start in range(0, count, chunk):
        log.append(bench_events(min(chunk, count - start)))
    engine.dispose()
    return time.perf_counter() - started
