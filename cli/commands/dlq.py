"""`fleet dlq`: messages that were delivered too often without finishing.

Each one is stored with its task name, queue and arguments once it came back
``worker.max_deliveries`` times (fleet/durability/deadletters.py). Replaying sends
it again under its own task id, so a task that derives a job id from it finds
the same job; dropping settles it without running it. Both are audited.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal

import click

from cli.common import config_errors_exit, settings_for_cli

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

ACTOR_PREFIX = "operator:"


@click.group("dlq")
def dlq_group() -> None:
    """Dead letters: list them, replay one, or drop one."""


def _sessions() -> sessionmaker[Session]:
    from fleet.storage.db import engine_for, migrate, session_factory

    engine = engine_for(settings_for_cli().sqlalchemy_url)
    migrate(engine)
    return session_factory(engine)


@dlq_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@config_errors_exit
def list_cmd(as_json: bool, limit: int) -> None:
    """Open dead letters, oldest first."""
    from fleet.durability.deadletters import open_letters

    letters = open_letters(_sessions(), limit)
    if as_json:
        for letter in letters:
            click.echo(
                json.dumps(
                    {
                        "letter_id": letter.letter_id,
                        "task_id": letter.task_id,
                        "task": letter.task_name,
                        "queue": letter.queue,
                        "args": letter.args,
                        "kwargs": letter.kwargs,
                        "deliveries": letter.deliveries,
                        "dead_at": letter.dead_at.isoformat(),
                        "reason": letter.reason,
                    }
                )
            )
        return
    if not letters:
        click.echo("no dead letters")
        return
    click.echo(f"{'letter':<32}  {'task':<32} {'queue':<18} {'deliveries':>10}  dead at")
    for letter in letters:
        click.echo(
            f"{letter.letter_id:<32}  {letter.task_name:<32} {letter.queue or '-':<18} "
            f"{letter.deliveries:>10}  {letter.dead_at:%Y-%m-%d %H:%M:%S}"
        )
        click.echo(
            f"{'':<34}args {json.dumps(letter.args)[:120]} kwargs {json.dumps(letter.kwargs)[:120]}"
        )


def _settle(letter_id: str, how: Literal["replayed", "dropped"], by: str) -> None:
    from fleet import audit
    from fleet.clock import SystemClock
    from fleet.durability.deadletters import LetterNotFound, settle
    from workers.app import app, create_producer
    from workers.runtime import on_demand

    settings = settings_for_cli()
    on_demand(app)  # the decision is audited through the queue (directly when Redis is down)
    try:
        letter = settle(_sessions(), letter_id, how, by, SystemClock().now())
    except LetterNotFound as exc:
        raise click.ClickException(str(exc)) from None
    if how == "replayed":
        producer = create_producer(settings)
        try:
            producer.send_task(
                letter.task_name,
                args=letter.args,
                kwargs=letter.kwargs,
                task_id=letter.task_id,
                ignore_result=True,
            )
        finally:
            producer.close()
    audit.record(
        actor=ACTOR_PREFIX + by,
        action=f"dead_letter_{how}",
        subject=letter.task_id,
        details={"letter_id": letter.letter_id, "task": letter.task_name, "queue": letter.queue},
    )
    click.echo(f"{letter.letter_id}: {letter.task_name}[{letter.task_id}] {how}")


@dlq_group.command("replay")
@click.argument("letter_id")
@click.option("--by", required=True, help="Who replays it (recorded in the audit).")
@config_errors_exit
def replay_cmd(letter_id: str, by: str) -> None:
    """Send a dead letter's message again, under its own task id (its count starts afresh)."""
    _settle(letter_id, "replayed", by)


@dlq_group.command("drop")
@click.argument("letter_id")
@click.option("--by", required=True, help="Who drops it (recorded in the audit).")
@config_errors_exit
def drop_cmd(letter_id: str, by: str) -> None:
    """Settle a dead letter without running it."""
    _settle(letter_id, "dropped", by)
