"""`fleet`: run and operate Fleet Commander from a terminal."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from config.errors import ConfigError
from config.settings import Settings, load_settings, reset_settings_cache
from workers.queues import ALL_QUEUES, FleetQueue

F = TypeVar("F", bound=Callable[..., Any])


def settings_for_cli() -> Settings:
    reset_settings_cache()
    return load_settings()


def config_errors_exit(func: F) -> F:
    """A configuration problem is one line on stderr and exit status 2, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"fleet: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Fleet Commander: the control plane for a fleet of AI agents.

    \b
    Start everything locally:   fleet up        (add --demo for a small simulated fleet)
    Check the system:           fleet status
    Run one part on its own:    fleet sandbox | fleet worker QUEUE | fleet beat | fleet flower

    Settings come from FLEET_* environment variables and an optional .env file
    (see `fleet config`); the domain policy from config/defaults/policy.yaml.
    """


@main.command()
@click.option(
    "--demo",
    is_flag=True,
    help="Seed a small simulated fleet and use short cadences so every queue is busy within a minute.",
)
@click.option(
    "--agents",
    type=int,
    default=None,
    help="Simulated agents seeded in the sandbox (default: 20 with --demo, else FLEET_SANDBOX__AGENTS).",
)
@click.option(
    "--concurrency",
    type=int,
    default=2,
    show_default=True,
    help="Processes per worker (one worker per queue).",
)
@config_errors_exit
def up(demo: bool, agents: int | None, concurrency: int) -> None:
    """Start the whole system: Redis, sandbox, a worker per queue, beat and Flower.

    Without FLEET_REDIS__URL an embedded Redis-protocol server is started.
    Ctrl-C stops everything.
    """
    from cli.up import run_up
    from config.settings import PACKAGE_DIR

    if demo:
        # Short cadences so a newcomer sees every queue consumed within a minute.
        os.environ.setdefault("FLEET_SCHEDULE__HEARTBEAT_S", "5")
        os.environ.setdefault("FLEET_SCHEDULE__METRICS_SWEEP_S", "15")
        os.environ.setdefault("FLEET_SCHEDULE__SLA_CHECK_S", "30")
        os.environ.setdefault("FLEET_SCHEDULE__ESCALATION_TICK_S", "5")
        os.environ.setdefault(
            "FLEET_POLICY_FILE", str(PACKAGE_DIR / "defaults" / "demo-policy.yaml")
        )
    settings = settings_for_cli()
    manifest = PACKAGE_DIR / "manifests" / "demo.yaml" if demo else None
    sys.exit(
        run_up(
            settings,
            agents=agents if agents is not None else (20 if demo else None),
            concurrency=concurrency,
            demo_manifest=manifest,
        )
    )


@main.command()
@click.option(
    "--agents",
    type=int,
    default=None,
    help="Simulated agents to seed (default FLEET_SANDBOX__AGENTS).",
)
@click.option("--port", type=int, default=None, help="Port (default FLEET_SANDBOX__PORT).")
@click.argument("sandbox_args", nargs=-1, type=click.UNPROCESSED)
@config_errors_exit
def sandbox(agents: int | None, port: int | None, sandbox_args: tuple[str, ...]) -> None:
    """Run the local gateway sandbox in the foreground.

    Extra arguments go to the sandbox itself (`fleet sandbox -- --help` lists them).
    """
    from cli.processes import sandbox_argv

    settings = settings_for_cli()
    if port is not None:
        settings = settings.model_copy(
            update={"sandbox": settings.sandbox.model_copy(update={"port": port})}
        )
    argv = sandbox_argv(settings, agents, sandbox_args)
    os.execv(argv[0], argv)


@main.command()
@click.argument("queue", type=click.Choice([q.value for q in ALL_QUEUES]))
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Worker processes (default FLEET_WORKER__CONCURRENCY).",
)
@click.option(
    "--pool",
    type=click.Choice(["prefork", "threads", "solo"]),
    default="prefork",
    show_default=True,
)
@config_errors_exit
def worker(queue: str, concurrency: int | None, pool: str) -> None:
    """Run a Celery worker consuming one QUEUE."""
    from cli.processes import worker_argv

    settings = settings_for_cli()
    argv = worker_argv(
        FleetQueue(queue), concurrency or settings.worker.concurrency, pool, settings.log_level
    )
    os.execv(argv[0], argv)


@main.command()
@config_errors_exit
def api() -> None:
    """Serve the HTTP API (OpenAPI at /docs) on FLEET_API__HOST:FLEET_API__PORT."""
    from cli.processes import api_argv

    argv = api_argv(settings_for_cli())
    os.execv(argv[0], argv)


@main.command()
@config_errors_exit
def beat() -> None:
    """Run the beat scheduler (exactly one per deployment)."""
    from cli.processes import beat_argv

    settings = settings_for_cli()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    argv = beat_argv(settings)
    os.execv(argv[0], argv)


@main.command()
@config_errors_exit
def flower() -> None:
    """Run Flower, behind basic auth from FLEET_FLOWER__USER / FLEET_FLOWER__PASSWORD."""
    from cli.processes import flower_argv, flower_env

    settings = settings_for_cli()
    argv = flower_argv(settings)
    os.execve(argv[0], argv, {**os.environ, **flower_env(settings)})


@main.command()
@config_errors_exit
def status() -> None:
    """Show each queue's depth and when a worker last answered its heartbeat."""
    import redis

    from fleet.heartbeat import read_heartbeat
    from fleet.hotstate import connect

    settings = settings_for_cli()
    r = connect(settings.redis_url)
    try:
        r.ping()
    except redis.RedisError as exc:
        click.echo(f"fleet: cannot reach Redis at {settings.redis_url}: {exc}", err=True)
        sys.exit(1)
    now = time.time()
    stale_after = settings.schedule.heartbeat_s * 3
    click.echo(f"{'queue':<18} {'depth':>7}  {'last heartbeat':<16} worker")
    unhealthy = 0
    for queue in ALL_QUEUES:
        depth = r.llen(queue.value)
        beat = read_heartbeat(r, queue.value)
        if beat is None:
            age_text, who = "never", "-"
            unhealthy += 1
        else:
            age = now - beat.ran_at
            age_text = f"{age:.0f} s ago" + (" (stale)" if age > stale_after else "")
            unhealthy += age > stale_after
            who = beat.worker
        click.echo(f"{queue.value:<18} {depth:>7}  {age_text:<16} {who}")
    _echo_fleet_health(settings, r, now)
    sys.exit(1 if unhealthy else 0)


def _echo_fleet_health(settings: Settings, r: Any, now: float) -> None:
    """The last sweep's fleet view and the open alerts, under the queue table."""
    from fleet.monitoring.sweep import fleet_health, recent_sweeps, sweep_status

    fleets, meta = fleet_health(r)
    click.echo("")
    if not fleets:
        click.echo("fleet health: no sweep has finished yet")
    else:
        age = now - float(meta.get("finished_at") or now)
        click.echo(
            f"fleet health (sweep {meta.get('sweep_id')}, {age:.0f} s ago, took {float(meta.get('wall_s') or 0):.1f} s)"
        )
        click.echo(
            f"{'fleet':<18} {'agents':>7} {'healthy':>8} {'degraded':>9} {'critical':>9} {'unknown':>8} "
            f"{'p99 ms':>8} {'errors':>7} {'SLA ok':>7} {'burn $/h':>10}"
        )

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.1%}"

        for name, h in sorted(fleets.items(), key=lambda kv: (kv[0] == "*", kv[0])):
            if name == "*" and len(fleets) == 2:
                continue  # one fleet: its line is the total
            p99 = "-" if h["latency_p99"] is None else f"{h['latency_p99']:.0f}"
            click.echo(
                f"{'(all)' if name == '*' else name:<18} {h['agents']:>7} {h['healthy']:>8} {h['degraded']:>9} "
                f"{h['critical']:>9} {h['unknown']:>8} {p99:>8} {pct(h['error_rate']):>7} "
                f"{pct(h['sla_compliance']):>7} {h['burn_rate_per_hour']:>10}"
            )
    running = [
        s
        for s in (sweep_status(r, sid) for sid in recent_sweeps(r, 1))
        if s and s["status"] == "running"
    ]
    for s in running:
        click.echo(
            f"sweep {s['sweep_id']} running: {s['agents_done']}/{s['agents']} agents, {s['unknown']} unknown"
        )
    try:
        from fleet.monitoring.alerts import open_counts
        from fleet.storage.db import engine_for, session_factory

        counts = open_counts(session_factory(engine_for(settings.sqlalchemy_url)))
    except Exception as exc:  # noqa: BLE001 - status must print what it can
        click.echo(f"alerts: database not readable ({type(exc).__name__})")
        return
    order = ("emergency", "critical", "warning", "info")
    text = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s)) or "none"
    click.echo(f"open alerts: {text}" + ("  (`fleet alerts`)" if counts else ""))


@main.command("alerts")
@click.option("--all", "show_all", is_flag=True, help="Resolved alerts too, newest first.")
@click.option(
    "--severity", type=click.Choice(["info", "warning", "critical", "emergency"]), default=None
)
@click.option("--subject", default=None, help="One agent id or fleet name.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_errors_exit
def alerts_cmd(
    show_all: bool, severity: str | None, subject: str | None, limit: int, as_json: bool
) -> None:
    """List open alerts (one per condition while it holds), newest first."""
    import json

    from fleet.monitoring.alerts import list_alerts
    from fleet.storage.db import engine_for, migrate, session_factory

    settings = settings_for_cli()
    engine = engine_for(settings.sqlalchemy_url)
    migrate(engine)
    rows = list_alerts(
        session_factory(engine),
        open_only=not show_all,
        severity=severity,
        subject=subject,
        limit=limit,
    )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no alerts" if show_all else "no open alerts")
        return
    click.echo(
        f"{'fired (UTC)':<20} {'severity':<9} {'state':<8} {'rule':<26} {'subject':<32} value"
    )
    for a in rows:
        fired = a["fired_at"][:19].replace("T", " ")
        click.echo(
            f"{fired:<20} {a['severity']:<9} {a['state']:<8} {a['rule']:<26} {a['subject']:<32} {a['value']}"
            + (f" (threshold {a['threshold']})" if a["threshold"] else "")
        )


@main.command("config")
@config_errors_exit
def show_config() -> None:
    """Print the effective settings (secrets masked) and validate the policy file."""
    settings = settings_for_cli()
    click.echo(settings.model_dump_json(indent=2))
    click.echo(
        f"# policy: {settings.policy_file} ({len(settings.policy.sla_templates)} SLA templates) — valid"
    )


# --------------------------------------------------------------------------- audit, approvals, compliance


def _audit_context(settings: Settings) -> tuple[Any, Any]:
    """The audit log and the approvals service on the configured database (schema brought up to date)."""
    from fleet.approvals import Approvals
    from fleet.audit.log import AuditLog
    from fleet.clock import SystemClock
    from fleet.storage.db import engine_for, migrate, session_factory

    engine = engine_for(settings.sqlalchemy_url)
    migrate(engine)
    # Decisions are audited through the queue when Redis is up, straight into the log when not.
    from workers.app import app
    from workers.runtime import on_demand

    on_demand(app)

    return AuditLog.from_settings(settings, engine=engine), Approvals(
        session_factory(engine), settings.policy.approvals, clock=SystemClock()
    )


def _parse_when(value: str | None) -> Any:
    from datetime import UTC, datetime

    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or time (e.g. 2026-01-31 or 2026-01-31T12:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@main.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log: verify it, export it, archive it."""


@audit_group.command("verify")
@click.option(
    "--public-key",
    default=None,
    help="Check signatures with this key (hex or PEM file) instead of the local signing key.",
)
@click.option(
    "--export",
    "export_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Verify an export file alone, as a third party would.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@config_errors_exit
def audit_verify(public_key: str | None, export_file: str | None, as_json: bool) -> None:
    """Re-compute the hash chain and the signed checkpoints; name the first bad entry.

    Exit status 0 only when the log is intact.
    """
    import json
    from pathlib import Path

    from fleet.audit.signing import MissingSigningKey, load_public_key

    key = None
    if public_key:
        key_text = Path(public_key).read_text() if Path(public_key).is_file() else public_key
        key = load_public_key(key_text)
    if export_file:
        from fleet.audit.export import verify_export

        check = verify_export(Path(export_file), key)
        for line in check.problems:
            click.echo(f"problem: {line}")
        for line in check.warnings:
            click.echo(f"note: {line}")
        state = "intact" if check.ok else "TAMPERED"
        click.echo(
            f"{state}: {check.entries} entries ({check.first_seq}..{check.last_seq}), "
            f"{check.checkpoints} valid checkpoints, key {check.key_id}"
        )
        sys.exit(0 if check.ok else 1)

    from fleet.audit.verify import verify_log

    settings = settings_for_cli()
    log, _ = _audit_context(settings)
    try:
        report = verify_log(log, key)
    except MissingSigningKey as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for warning in report.warnings[:20]:
            click.echo(f"note: {warning}")
        click.echo(report.summary())
        click.echo(f"checked in {report.seconds:.2f} s")
    sys.exit(0 if report.ok else 1)


@audit_group.command("export")
@click.option("--since", default=None, help="First day or time (ISO 8601, UTC unless given).")
@click.option("--until", default=None, help="End (exclusive), ISO 8601.")
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default="-",
    show_default=True,
    help="File to write; - for standard output.",
)
@config_errors_exit
def audit_export(since: str | None, until: str | None, fmt: str, output: str) -> None:
    """Export entries with their hashes, the checkpoints and the public key, for a regulator.

    The export verifies on its own: `fleet audit verify --export FILE`.
    """
    from fleet.audit.export import export_log

    settings = settings_for_cli()
    log, _ = _audit_context(settings)
    out = click.open_file(output, "wb")
    with out:
        summary = export_log(log, out, fmt=fmt, since=_parse_when(since), until=_parse_when(until))  # type: ignore[arg-type]
    click.echo(
        f"exported {summary.entries} entries ({summary.first_seq}..{summary.last_seq}) "
        f"and {summary.checkpoints} checkpoints; key {log.signer.key_id}",
        err=True,
    )


@audit_group.command("public-key")
@config_errors_exit
def audit_public_key() -> None:
    """Print the public key that signs checkpoints (PEM), to publish for verifiers."""
    from fleet.audit.log import AuditFiles
    from fleet.audit.signing import load_signer

    signer = load_signer(AuditFiles.from_settings(settings_for_cli()).signing_key)
    click.echo(signer.public_pem().rstrip())
    click.echo(f"# key id {signer.key_id}; raw {signer.public_hex}")


@audit_group.command("archive")
@config_errors_exit
def audit_archive() -> None:
    """Archive entries older than the retention period now (beat does it daily)."""
    from fleet.audit.retention import RetentionRefused, archive_expired

    settings = settings_for_cli()
    log, _ = _audit_context(settings)
    try:
        result = archive_expired(
            log,
            settings.policy.retention.audit_days,
            respect_mirror=settings.policy.audit.mirror_enabled,
        )
    except RetentionRefused as exc:
        raise click.ClickException(str(exc)) from None
    if result is None:
        click.echo(f"nothing older than {settings.policy.retention.audit_days:g} days to archive")
    else:
        click.echo(f"archived entries {result.first_seq}..{result.last_seq} to {result.file}")


@main.group("approvals")
def approvals_group() -> None:
    """Human oversight: requests waiting for approval, and the post-hoc review queue."""


def _print_request(view: Any) -> None:
    votes = ", ".join(f"{v.approver} {v.verdict}d" for v in view.votes) or "no votes"
    due = view.expires_at or view.review_due_at
    click.echo(
        f"{view.request_id}  {view.risk.value:<8} {view.status.value:<9} {view.action} on {view.subject} "
        f"by {view.requested_by}; {view.approvals}/{view.required} approvals ({votes})"
        + (f"; due {due:%Y-%m-%d %H:%M} UTC" if due else "")
    )


@approvals_group.command("list")
@click.option(
    "--status",
    type=click.Choice(["pending", "approved", "denied", "executed", "auto"]),
    default=None,
)
@click.option(
    "--review", is_flag=True, help="The post-hoc review queue (MEDIUM actions not yet reviewed)."
)
@click.option("--all", "show_all", is_flag=True, help="Every status (default: pending only).")
@click.option("--json", "as_json", is_flag=True)
@config_errors_exit
def approvals_list(status: str | None, review: bool, show_all: bool, as_json: bool) -> None:
    """List approval requests (pending ones by default)."""
    import json

    from fleet.approvals import RequestStatus

    _, service = _audit_context(settings_for_cli())
    wanted = None if show_all else RequestStatus(status or "pending")
    views = service.list_requests(status=wanted, review_queue=review)
    if as_json:
        click.echo(json.dumps([v.to_dict() for v in views], indent=2))
        return
    for view in views:
        _print_request(view)
    if not views:
        click.echo("no requests")


def _decide(request_id: str, by: str, comment: str, approve: bool) -> None:
    from fleet.approvals import ApprovalError

    _, service = _audit_context(settings_for_cli())
    try:
        view = (
            service.approve(request_id, by, comment)
            if approve
            else service.reject(request_id, by, comment)
        )
    except ApprovalError as exc:
        click.echo(f"fleet: {exc}", err=True)
        sys.exit(1)
    _print_request(view)
    if view.status.value == "approved" and view.task:
        from fleet.approvals.gate import dispatch_approved
        from workers.app import app
        from workers.runtime import on_demand

        try:
            dispatch_approved(service, on_demand(app).send)
            click.echo(f"sent {view.task}")
        except Exception as exc:  # noqa: BLE001 - the sweep sends it later
            click.echo(f"approved; {view.task} will be sent by the next sweep ({exc})", err=True)


@approvals_group.command("approve")
@click.argument("request_id")
@click.option("--by", required=True, help="Your name, as recorded in the audit log.")
@click.option("--comment", default="", help="Why.")
@config_errors_exit
def approvals_approve(request_id: str, by: str, comment: str) -> None:
    """Approve REQUEST_ID (you cannot approve your own request, or vote twice)."""
    _decide(request_id, by, comment, approve=True)


@approvals_group.command("reject")
@click.argument("request_id")
@click.option("--by", required=True, help="Your name, as recorded in the audit log.")
@click.option("--comment", default="", help="Why.")
@config_errors_exit
def approvals_reject(request_id: str, by: str, comment: str) -> None:
    """Reject REQUEST_ID: it is denied and never runs."""
    _decide(request_id, by, comment, approve=False)


@approvals_group.command("review")
@click.argument("request_id")
@click.option("--by", required=True)
@click.option("--note", default="")
@config_errors_exit
def approvals_review(request_id: str, by: str, note: str) -> None:
    """Close the post-hoc review of a MEDIUM action."""
    from fleet.approvals import ApprovalError

    _, service = _audit_context(settings_for_cli())
    try:
        _print_request(service.review(request_id, by, note))
    except ApprovalError as exc:
        click.echo(f"fleet: {exc}", err=True)
        sys.exit(1)


@approvals_group.command("release")
@click.argument("agent_id")
@click.option("--by", required=True, help="Who asks for the release.")
@click.option("--reason", required=True)
@config_errors_exit
def approvals_release(agent_id: str, by: str, reason: str) -> None:
    """Ask to release a frozen AGENT_ID; it runs once someone else approves."""
    from fleet.approvals.release import request_release

    _, service = _audit_context(settings_for_cli())
    gate = request_release(service, agent_id, by, reason=reason)
    if gate.request is not None:
        _print_request(gate.request)


@main.group("report")
def report_group() -> None:
    """Reports for people and regulators."""


@report_group.command("compliance")
@click.option("--fleet", "fleet_name", default=None, help="Fleet name (default FLEET_FLEET_NAME).")
@click.option(
    "--period",
    default=None,
    help="A month (2026-05) or days up to now (30d); default the last month.",
)
@click.option("--no-gateway", is_flag=True, help="Only our own evidence; do not ask the gateway.")
@config_errors_exit
def report_compliance(fleet_name: str | None, period: str | None, no_gateway: bool) -> None:
    """Per article 9, 11, 12, 13, 14, 15: our evidence merged with the gateway's, as JSON and HTML."""
    from fleet.audit.compliance import previous_month, produce_report
    from fleet.clock import SystemClock
    from fleet.gateway import GatewayClient

    settings = settings_for_cli()
    log, service = _audit_context(settings)
    client = None if no_gateway else GatewayClient.from_settings(settings)
    try:
        report, json_path, html_path = produce_report(
            settings,
            log,
            service,
            fleet_name or settings.fleet_name,
            period or previous_month(SystemClock().now()),
            client.call if client else None,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--period") from None
    finally:
        if client is not None:
            client.close()
    for section in report["articles"].values():
        click.echo(f"Art. {section['article']:<3} {section['status']:<10} {section['title']}")
    if report["gateway"].get("error"):
        click.echo(f"gateway: {report['gateway']['error']}", err=True)
    click.echo(f"written {json_path} and {html_path}")


# Command groups that live in their own modules register themselves on `main`.
import cli.bench  # noqa: E402,F401
import cli.provisioning_cmds  # noqa: E402,F401
import cli.sla_cmds  # noqa: E402,F401

# --------------------------------------------------------------------------- audit benchmarks (`fleet bench …`)


@click.command("audit")
@click.option("--entries", type=int, default=50000, show_default=True)
@click.option(
    "--batch", type=int, default=None, help="Events per queue message (default audit.batch_size)."
)
@click.option(
    "--concurrency",
    type=int,
    default=2,
    show_default=True,
    help="Audit worker processes (or threads).",
)
@click.option(
    "--pool", type=click.Choice(["prefork", "threads"]), default="prefork", show_default=True
)
@click.option(
    "--mirror", is_flag=True, help="Also mirror to the (zero-latency) sandbox while appending."
)
@click.option(
    "--keep", type=click.Path(file_okay=False), default=None, help="Keep the stack's files here."
)
@config_errors_exit
def bench_audit(
    entries: int, batch: int | None, concurrency: int, pool: str, mirror: bool, keep: str | None
) -> None:
    """Push ENTRIES audit events through the audit queue into SQLite; the last line is the rate."""
    import shutil
    import tempfile
    from pathlib import Path

    base = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="fleet-bench-audit-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        _bench_audit_in(base, entries, batch, concurrency, pool, mirror)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def _bench_audit_in(
    base: Any, entries: int, batch: int | None, concurrency: int, pool: str, mirror: bool
) -> None:
    import json

    import yaml

    from cli.stack import local_stack
    from config.settings import DEFAULT_POLICY_FILE
    from fleet.audit.bench import bench_events, payloads, wait_for_entries
    from fleet.audit.log import AuditLog
    from fleet.audit.verify import verify_log

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
            f"sent in {sent:.2f} s; all {entries} appended in {wall:.2f} s; chain {report.summary()}"
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
                }
            )
        )


@click.command("audit-verify")
@click.option("--entries", type=int, default=1_000_000, show_default=True)
@click.option(
    "--keep", type=click.Path(file_okay=False), default=None, help="Keep the database here."
)
@config_errors_exit
def bench_audit_verify(entries: int, keep: str | None) -> None:
    """Fill a SQLite log with ENTRIES entries, then time `fleet audit verify` on it."""
    import shutil
    import tempfile
    from pathlib import Path

    base = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="fleet-bench-verify-"))
    try:
        _bench_verify_in(base, entries)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def _bench_verify_in(base: Any, entries: int) -> None:
    import json
    import subprocess

    from fleet.audit.bench import fill_log

    settings = load_settings(data_dir=base, database_url=f"sqlite:///{base / 'fleet.db'}")
    click.echo(f"filling {entries} entries into {settings.sqlalchemy_url} …")
    fill_s = fill_log(settings, entries)
    click.echo(f"filled in {fill_s:.1f} s; running `fleet audit verify`")
    env = {**os.environ, "FLEET_DATA_DIR": str(base), "FLEET_DATABASE_URL": settings.sqlalchemy_url}
    started = time.perf_counter()
    argv = [sys.executable, "-c", "from cli.main import main; main()", "audit", "verify"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    click.echo(proc.stdout.rstrip())
    if proc.returncode != 0:
        click.echo(proc.stderr.rstrip(), err=True)
    click.echo(
        json.dumps({"entries": entries, "verify_s": round(wall, 2), "exit_status": proc.returncode})
    )


def _register_audit_benchmarks() -> None:
    # The `bench` group lives in cli.bench, which imports this module: look it up, don't import it.
    group = getattr(sys.modules.get("cli.bench"), "bench", None)
    if isinstance(group, click.Group):
        group.add_command(bench_audit)
        group.add_command(bench_audit_verify)


_register_audit_benchmarks()


if __name__ == "__main__":  # pragma: no cover
    main()
