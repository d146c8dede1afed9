"""`fleet approvals …`: human oversight of gated actions."""

from __future__ import annotations

import sys
from typing import Any

import click

from cli.common import audit_context, config_errors_exit, settings_for_cli


@click.group("approvals")
def approvals_group() -> None:
    """Human oversight: requests waiting for approval, and the post-hoc review queue."""


def _print_request(view: Any) -> None:
    votes = ", ".join(f"{v.approver} {v.verdict}d" for v in view.votes) or "no votes"
    due = view.expires_at or view.review_due_at
    click.echo(
        f"{view.request_id}  {view.risk.value:<8} {view.status.value:<9} {view.action} on "
        f"{view.subject} "
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

    _, service = audit_context(settings_for_cli())
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

    _, service = audit_context(settings_for_cli())
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

    _, service = audit_context(settings_for_cli())
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

    _, service = audit_context(settings_for_cli())
    gate = request_release(service, agent_id, by, reason=reason)
    if gate.request is not None:
        _print_request(gate.request)
