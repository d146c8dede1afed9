"""Tasks on the `routing` queue: work submitted for the fleet.

Public entry points for other systems — any Celery client, or anything that writes
Celery's message protocol (JSON) to Redis:

    task name:  routing.submit_task
    kwargs:     {"task": {<submission>}}
    task name:  routing.submit_tasks          (a bulk submitter's batch, up to 1,000)
    kwargs:     {"tasks": [{<submission>}, ...]}

    submission: {"type": "summarise",                       # what kind of work
                 "capabilities": ["support"],               # every one required of the agent
                 "estimated_tokens": 1200,
                 "payer": {"kind": "agent" | "segment" | "pool", "id": "..."},
                 "idempotency_key": "caller-chosen, unique per task",
                 "fleet": "support-fleet",                  # optional: route within it
                 "input": "the text the agent receives",   # optional
                 "trace": {"traceparent": "00-…-…-01", "tracestate": ""}}   # optional, W3C

The task id is the message's task id (``submit_task``) or ``{message id}.{index}``
(``submit_tasks``). A submission that is not valid is refused with every problem by
path (the message is rejected, not retried). State: GET /api/v1/tasks/{task_id}; a
second submission with the same idempotency key answers with the first task's id
and runs nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Reject

from fleet.control import LoopPaused
from fleet.work import store
from fleet.work.service import run_tasks, task_id_for
from fleet.work.submission import SubmissionError, parse_submission
from tasks._base import fleet_task, runtime
from workers.queues import TaskName

log = logging.getLogger(__name__)

# The routing queue's heartbeat task is defined once, in tasks/budgets.py.

MAX_BATCH = 1000


@fleet_task(TaskName.SUBMIT_TASK, bind=True, ignore_result=False)
def submit_task(self: Task, task: Any) -> dict[str, Any]:
    try:
        sub = parse_submission(task)
    except SubmissionError as exc:
        raise Reject(f"invalid task: {exc}", requeue=False) from None
    try:
        return run_tasks(runtime().work, [(sub, task_id_for(str(self.request.id)))])[0]
    except LoopPaused as paused:  # the kill switch: held, sent again, nothing claimed
        raise self.retry(countdown=paused.retry_in, max_retries=None) from None


@fleet_task(TaskName.SUBMIT_TASKS, bind=True)
def submit_tasks(self: Task, tasks: Any) -> dict[str, Any]:
    if not isinstance(tasks, list) or not 1 <= len(tasks) <= MAX_BATCH:
        raise Reject(f"tasks: a list of 1 to {MAX_BATCH} submissions", requeue=False)
    problems: list[str] = []
    subs = []
    for i, item in enumerate(tasks):
        try:
            subs.append((parse_submission(item), task_id_for(str(self.request.id), i)))
        except SubmissionError as exc:
            problems += [f"tasks.{i}.{p}" for p in exc.problems]
    if problems:
        raise Reject("invalid tasks: " + "; ".join(problems), requeue=False)
    try:
        done = run_tasks(runtime().work, subs)
    except LoopPaused as paused:
        raise self.retry(countdown=paused.retry_in, max_retries=None) from None
    states: dict[str, int] = {}
    for d in done:
        states[str(d["state"])] = states.get(str(d["state"]), 0) + 1
    return {"tasks": len(done), "states": states}


@fleet_task(TaskName.FLUSH_WORK_RECORDS)
def flush_records() -> int:
    rt = runtime()
    return store.flush_records(rt.redis, rt.sessions, rt.settings.work.record_batch)
