"""`fleet validate`, `fleet provision`, `fleet retire`, `fleet db`: the provisioning side."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import click

from cli.common import config_errors_exit, settings_for_cli
from fleet.provisioning.manifest import ManifestError, manifest_json_schema, parse_manifest_text
from workers.queues import TaskName


def _read_manifest(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None


@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@config_errors_exit
def validate(manifest: str) -> None:
    """Check a fleet MANIFEST without calling anything; list every problem by path."""
    settings = settings_for_cli()
    try:
        parsed = parse_manifest_text(_read_manifest(manifest), settings.policy)
    except ManifestError as exc:
        for problem in exc.problems:
            click.echo(f"{manifest}: {problem}", err=True)
        sys.exit(1)
    click.echo(
        f"{manifest}: valid — fleet {parsed.fleet!r} ({parsed.environment}), {parsed.total_agents} "
        f"agents in {len(parsed.agents)} groups"
    )


@click.command("manifest-schema")
def manifest_schema() -> None:
    """Print the JSON Schema of fleet manifests (published as docs/manifest.schema.json)."""
    click.echo(json.dumps(manifest_json_schema(), indent=2))


@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option(
    "--wait",
    is_flag=True,
    help="Follow the job with a live progress bar until every agent is done or failed.",
)
@click.option("--job-id", default=None, help="Idempotency key for the job (default: a new id).")
@click.option(
    "--timeout", type=float, default=3600, show_default=True, help="Seconds to wait with --wait."
)
@config_errors_exit
def provision(manifest: str, wait: bool, job_id: str | None, timeout: float) -> None:
    """Provision the agents of a fleet MANIFEST on the provisioning queue."""
    from fleet.provisioning import pipeline
    from tasks.provisioning import provision_fleet
    from workers.app import app
    from workers.runtime import on_demand

    settings = settings_for_cli()
    try:
        parsed = parse_manifest_text(_read_manifest(manifest), settings.policy)
    except ManifestError as exc:
        for problem in exc.problems:
            click.echo(f"{manifest}: {problem}", err=True)
        sys.exit(1)
    _ensure_schema(settings)
    job_id = job_id or uuid.uuid4().hex
    try:
        pipeline.queue_job(
            on_demand(app).provisioning,
            parsed.model_dump(mode="json"),
            job_id,
            submitted_by="cli",
        )
    except pipeline.ProvisioningFrozen as exc:
        raise click.ClickException(str(exc)) from None
    provision_fleet.apply_async(
        kwargs={
            "manifest": parsed.model_dump(mode="json"),
            "job_id": job_id,
            "submitted_by": "cli",
        },
        task_id=job_id,
    )
    click.echo(f"job {job_id}: {parsed.total_agents} agents queued")
    if wait:
        sys.exit(follow_job(job_id, timeout))


def follow_job(job_id: str, timeout: float) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fleet.provisioning import pipeline
    from workers.app import app
    from workers.runtime import on_demand

    sessions = on_demand(app).sessions
    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
    ) as bar:
        task = bar.add_task(f"job {job_id[:12]}", total=None, failed=0)
        while True:
            progress = pipeline.job_progress(sessions, job_id, with_agents=False)
            if progress is not None:
                bar.update(
                    task,
                    total=progress.total,
                    completed=progress.done + progress.failed,
                    failed=progress.failed,
                )
                if progress.state in ("done", "invalid", "refused"):
                    progress = pipeline.job_progress(sessions, job_id) or progress
                    break
            if time.monotonic() > deadline:
                click.echo(f"job {job_id}: still running after {timeout:.0f} s", err=True)
                return 1
            time.sleep(0.5)
    for agent in progress.agents:
        if agent.status == "failed":
            click.echo(f"  failed {agent.agent_id}: {agent.failure_reason}", err=True)
    click.echo(
        f"job {job_id}: {progress.state} — {progress.done} active, {progress.failed} failed of "
        f"{progress.total}"
    )
    return 0 if progress.state == "done" and progress.failed == 0 else 1


def _ensure_schema(settings: object) -> None:
    from fleet.storage.db import engine_for, migrate

    migrate(engine_for(settings.sqlalchemy_url))  # type: ignore[attr-defined]


@click.group()
def db() -> None:
    """The database: schema migrations."""


@db.command("upgrade")
@config_errors_exit
def db_upgrade() -> None:
    """Bring the database schema up to date (safe to run again)."""
    settings = settings_for_cli()
    _ensure_schema(settings)
    click.echo(f"schema up to date at {settings.sqlalchemy_url.split('@')[-1]}")


def _approvals_and_deps() -> tuple[object, object]:
    from workers.app import app
    from workers.runtime import on_demand

    rt = on_demand(app)
    return rt.approvals, rt.provisioning


@click.command()
@click.argument("target")
@click.option("--reason", default="retired by operator", show_default=True)
@click.option(
    "--by",
    "requested_by",
    required=True,
    help="Who asks (recorded; may not approve their own request).",
)
@config_errors_exit
def retire(target: str, reason: str, requested_by: str) -> None:
    """Retire an agent, or every agent whose id starts with TARGET-.

    Retirement revokes an identity, so it is CRITICAL: each agent gets an
    approval request that needs two distinct approvers (`fleet approvals
    approve`); once approved it drains, settles SLAs, withdraws funds to the
    treasury, writes the final snapshot and audit entry, and deregisters.
    """
    from fleet.provisioning.lifecycle import agents_matching

    settings = settings_for_cli()
    _ensure_schema(settings)
    approvals, deps = _approvals_and_deps()
    agents = agents_matching(deps, target)  # type: ignore[arg-type]
    if not agents:
        raise click.ClickException(
            f"no active or paused agent is {target!r} or starts with {target + '-'!r}"
        )
    for agent_id in agents:
        gate = approvals.request(  # type: ignore[attr-defined]
            "retire_agent",
            agent_id,
            requested_by,
            reason=reason,
            irreversible=True,
            task=TaskName.RETIRE_AGENT,
            task_kwargs={"agent_id": agent_id, "reason": reason},
        )
        need = gate.request.required if gate.request else 0
        click.echo(
            f"{agent_id}: approval {gate.request_id} requested ({gate.risk.value}, {need} "
            "approver(s) needed)"
        )


@click.command()
@click.argument("agent_id")
@click.argument("new_tier")
@click.option("--by", "requested_by", required=True, help="Who asks.")
@config_errors_exit
def upgrade(agent_id: str, new_tier: str, requested_by: str) -> None:
    """Ask for AGENT_ID's move to NEW_TIER: cost estimated first (policy tier prices),
    approval needed above the configured increase. The gateway grants no tier through
    its API: once approved, the operator mints a key of that tier and imports it with
    `fleet keys import`."""
    from tasks.provisioning import upgrade_tier

    settings_for_cli()
    result = upgrade_tier.apply_async(
        kwargs={
            "agent_id": agent_id,
            "new_tier": new_tier,
            "requested_by": requested_by,
        }
    )
    click.echo(f"upgrade of {agent_id} to {new_tier} queued as task {result.id}")
