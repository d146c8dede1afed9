"""Queue topology and Celery configuration: pure checks, no broker."""

from __future__ import annotations

import pytest

from config.settings import load_settings
from workers.app import app
from workers.celery_config import celery_config
from workers.queues import ALL_QUEUES, FleetQueue, queue_for


def test_nine_queues_with_the_designed_names() -> None:
    assert [q.value for q in ALL_QUEUES] == [
        "provisioning",
        "metrics",
        "sla",
        "escalation.tier1",
        "escalation.tier2",
        "escalation.tier3",
        "escalation.tier4",
        "audit",
        "routing",
    ]


def test_every_registered_task_routes_to_its_own_queue() -> None:
    app.loader.import_default_modules()
    ours = [name for name in app.tasks if not name.startswith("celery.")]
    assert ours, "no tasks registered"
    router = app.amqp.router
    for name in ours:
        expected = queue_for(name)
        assert expected is not None, f"{name} matches no queue"
        route = router.route({}, name)
        assert route["queue"].name == expected.value, name


@pytest.mark.parametrize(
    ("name", "queue"),
    [
        ("escalation.tier1.remediate", FleetQueue.ESCALATION_TIER1),
        ("escalation.tier4.freeze", FleetQueue.ESCALATION_TIER4),
        ("provisioning.provision_fleet", FleetQueue.PROVISIONING),
        ("audit.append", FleetQueue.AUDIT),
        ("nothing.here", None),
    ],
)
def test_queue_for(name: str, queue: FleetQueue | None) -> None:
    assert queue_for(name) == queue


def test_celery_config_is_json_only_late_ack_and_bounded() -> None:
    settings = load_settings()
    conf = celery_config(settings)
    assert conf["accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_send_task_events"] and conf["task_send_sent_event"]
    assert conf["task_soft_time_limit"] < conf["task_time_limit"]
    assert conf["result_expires"] > 0
    assert conf["task_create_missing_queues"] is False
    # Redis must not redeliver a message that is merely waiting for its
    # countdown: every retry backoff we declare stays below the visibility timeout.
    app.loader.import_default_modules()
    longest_countdown = max(
        (
            getattr(t, "retry_backoff_max", 0)
            for n, t in app.tasks.items()
            if getattr(t, "autoretry_for", ())
        ),
        default=0,
    )
    assert conf["broker_transport_options"]["visibility_timeout"] > longest_countdown > 0


def test_beat_schedule_comes_from_settings() -> None:
    from config.settings import ScheduleSettings

    settings = load_settings(schedule=ScheduleSettings(heartbeat_s=7))
    schedule = celery_config(settings)["beat_schedule"]
    beats = {k: v for k, v in schedule.items() if k.startswith("heartbeat-")}
    assert len(beats) == len(ALL_QUEUES)
    for entry in beats.values():
        assert entry["schedule"] == 7
        assert entry["options"]["expires"] < 7  # a late tick never piles onto the next


def test_the_task_names_the_domain_sends_are_the_enums_and_registered() -> None:
    import tasks.audit  # noqa: F401 - registers the tasks
    import tasks.escalation  # noqa: F401
    from fleet.approvals.release import TASK as RELEASE_TASK
    from fleet.escalation.engine import TIER_TASKS
    from workers.queues import TaskName

    for name in [RELEASE_TASK, *TIER_TASKS.values()]:
        assert TaskName(name) in app.tasks
    assert {str(n) for n in TaskName} <= set(app.tasks)
