"""`fleet approvals …`: human oversight of gated actions."""

from __future__ import annotations

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


def _print_answer(answer: dict[str, Any]) -> None:
    votes = ", ".join(f"{v['approver']} {v['verdict']}d" for v in answer["votes"]) or "no votes"
    due = answer.get("expires_at") or answer.get("review_due_at")
    click.echo(
        f"{answer['request_id']}  {answer['risk']:<8} {answer['status']:<9} {answer['action']} on "
        f"{answer['subject']} by {answer['requested_by']}; "
        f"{answer['approvals']}/{answer['required']} approvals ({votes})"
        + (f"; due {due[:16].replace('T', ' ')} UTC" if due else "")
    )


def _decide(request_id: str, verdict: str, comment: str, digest: str | None) -> None:
    from cli.api_client import call

    body: dict[str, str] = {"comment": comment}
    if digest:
        body["action_digest"] = digest
    answer = call(
        settings_for_cli(), "POST", f"/api/v1/approvals/{request_id}/{verdict}", json_body=body
    )
    _print_answer(answer)
    if answer["status"] == "approved" and answer.get("task"):
        click.echo(f"approved: the API sends {answer['task']}")


_DIGEST_HELP = "Refuse unless the request is this action (its action_digests, `list --json`)."


@approvals_group.command("approve")
@click.argument("request_id")
@click.option("--comment", default="", help="Why.")
@click.option("--digest", default=None, help=_DIGEST_HELP)
@config_errors_exit
def approvals_approve(request_id: str, comment: str, digest: str | None) -> None:
    """Approve REQUEST_ID as yourself (you cannot approve your own request, or vote twice)."""
    _decide(request_id, "approve", comment, digest)


@approvals_group.command("reject")
@click.argument("request_id")
@click.option("--comment", default="", help="Why.")
@click.option("--digest", default=None, help=_DIGEST_HELP)
@config_errors_exit
def approvals_reject(request_id: str, comment: str, digest: str | None) -> None:
    """Reject REQUEST_ID as yourself: it is denied and never runs."""
    _decide(request_id, "reject", comment, digest)


@approvals_group.command("review")
@click.argument("request_id")
@click.option("--note", default="")
@config_errors_exit
def approvals_review(request_id: str, note: str) -> None:
    """Close the post-hoc review of a MEDIUM action, as yourself."""
    from cli.api_client import call

    _print_answer(
        call(
            settings_for_cli(),
            "POST",
            f"/api/v1/approvals/{request_id}/review",
            json_body={"note": note},
        )
    )


@approvals_group.command("release")
@click.argument("agent_id")
@click.option("--reason", required=True)
@config_errors_exit
def approvals_release(agent_id: str, reason: str) -> None:
    """Ask, as yourself, to release a frozen AGENT_ID; it runs once someone else approves."""
    from cli.api_client import call

    answer = call(
        settings_for_cli(),
        "POST",
        "/api/v1/release-requests",
        json_body={"agent_id": agent_id, "reason": reason},
    )
    if answer.get("request"):
        _print_answer(answer["request"])
