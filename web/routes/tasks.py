"""Work for the fleet over HTTP: submit a task, read what became of it.

``POST /api/v1/tasks`` (scope ``tasks:submit``) validates the submission (the same
contract as the ``routing.submit_task`` message, see tasks/routing.py) and enqueues it;
the answer names the task id at once (202), or the first task's id when the
idempotency key was seen before (200, ``duplicate: true``). A ``traceparent`` header is
taken as the trace context when the body carries none.
``GET /api/v1/tasks/{task_id}`` (scope ``tasks:read``) answers its state or record.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from fleet.identity import Permission, Principal
from fleet.work import store
from fleet.work.service import new_task_id
from fleet.work.submission import SubmissionError, TaskSubmission, parse_submission
from tasks.routing import submit_task
from web.app_auth import require
from web.deps import RuntimeDep
from web.problems import ProblemError

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])

Submitter = Annotated[Principal, Depends(require(Permission.TASKS_SUBMIT))]
Reader = Annotated[Principal, Depends(require(Permission.TASKS_READ))]


# The body is read and parsed here (a traceparent header may complete it), so its
# schema is declared for the OpenAPI document by hand.
_SUBMISSION_BODY = {
    "required": True,
    "content": {"application/json": {"schema": TaskSubmission.model_json_schema()}},
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra={"requestBody": _SUBMISSION_BODY},
    responses={
        200: {"description": "The idempotency key was seen before: the first task's id."},
        422: {"description": "Not a task submission: every problem by path."},
    },
)
async def submit(
    request: Request, response: Response, rt: RuntimeDep, principal: Submitter
) -> dict[str, Any]:
    """Validate a task and enqueue it for routing and delivery."""
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise ProblemError(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"body is not JSON: {exc}", error="InvalidTask"
        ) from None
    header = request.headers.get("traceparent")
    if isinstance(data, dict) and "trace" not in data and header:
        data = {**data, "trace": {"traceparent": header}}
        if request.headers.get("tracestate"):
            data["trace"]["tracestate"] = request.headers["tracestate"]
    try:
        sub = parse_submission(data)
    except SubmissionError as exc:
        raise ProblemError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            exc.problems[0],
            error="InvalidTask",
            problems=exc.problems,
        ) from None
    seen = await run_in_threadpool(rt.redis.get, store.idem_key(sub.idempotency_key))
    if seen is not None:
        response.status_code = status.HTTP_200_OK
        return {"task_id": str(seen), "duplicate": True}
    task_id = new_task_id()
    # Readable at once: a GET right after the 202 answers "queued", not 404.
    await run_in_threadpool(
        store.mark_queued, rt.redis, task_id, rt.settings.work.idempotency_ttl_s
    )
    await run_in_threadpool(
        submit_task.apply_async, kwargs={"task": sub.model_dump(mode="json")}, task_id=task_id
    )
    return {"task_id": task_id, "duplicate": False, "submitted_by": principal.principal_id}


@router.get("/{task_id}", responses={404: {"description": "No such task."}})
async def read(task_id: str, rt: RuntimeDep, _: Reader) -> dict[str, Any]:
    """The task's record once finished, its phase while it runs."""
    found = await run_in_threadpool(store.task_state, rt.redis, rt.sessions, task_id)
    if not found:
        raise ProblemError(status.HTTP_404_NOT_FOUND, f"no task {task_id!r}", error="NotFound")
    return found
