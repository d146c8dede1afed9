"""Provisioning jobs over HTTP: POST a manifest (JSON or YAML), GET its progress.

The guard (web/guard.py) has already bounded the body and refused other
content types; JSON is parsed as JSON, YAML by the manifest's own loader
(no aliases, bounded), both on a worker thread so a large manifest never
stalls the event loop.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from fleet.identity import Permission, Principal
from fleet.provisioning import pipeline
from fleet.provisioning.manifest import ManifestError, load_manifest_yaml, manifest_json_schema
from tasks.provisioning import provision_fleet
from web.app_auth import require
from web.deps import RuntimeDep
from web.guard import JSON_TYPES
from web.problems import ProblemError

PREFIX = "/api/v1/provisioning-jobs"
router = APIRouter(prefix=PREFIX, tags=["provisioning"])

Submitter = Annotated[Principal, Depends(require(Permission.PROVISIONING_SUBMIT))]
Reader = Annotated[Principal, Depends(require(Permission.PROVISIONING_READ))]


class JobAccepted(BaseModel):
    job_id: str
    state: str
    total: int
    status_url: str


def _parse(body: bytes, media_type: str) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(["(manifest): not UTF-8 text"]) from None
    if JSON_TYPES.match(media_type):
        try:
            # Floats stay exact, as the YAML loader keeps them.
            return json.loads(text, parse_float=_exact)
        except ValueError as exc:
            raise ManifestError([f"(manifest): not valid JSON: {exc}"]) from None
    return load_manifest_yaml(text)


def _exact(text: str) -> Any:
    from decimal import Decimal

    return Decimal(text)


def _manifest_schema() -> dict[str, Any]:
    schema = manifest_json_schema()
    schema.pop("title", None)
    return schema


_MANIFEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": _manifest_schema()},
        "application/yaml": {"schema": _manifest_schema()},
    },
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    openapi_extra={"requestBody": _MANIFEST_BODY},
    responses={
        409: {
            "description": "Provisioning is frozen (kill switch), or the manifest is well-formed "
            "but conflicts with this deployment's policy (unknown SLA template, a tier it "
            "forbids, a duplicate prefix, over the per-manifest ceiling)."
        },
        422: {"description": "The body is not valid JSON/YAML, or not a manifest by its schema."},
    },
)
async def create_job(request: Request, rt: RuntimeDep, principal: Submitter) -> JobAccepted:
    """Validate a fleet manifest and enqueue its provisioning; answers at once with the job id."""
    body = await request.body()
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    job_id = uuid.uuid4().hex
    submitted_by = principal.principal_id
    try:
        data = await run_in_threadpool(_parse, body, media_type)
        manifest = await run_in_threadpool(
            pipeline.queue_job, rt.provisioning, data, job_id, submitted_by
        )
    except ManifestError as exc:
        raise ProblemError(
            status.HTTP_409_CONFLICT
            if exc.conflicts_with_policy
            else status.HTTP_422_UNPROCESSABLE_CONTENT,
            exc.problems[0] if exc.problems else "invalid manifest",
            error="ManifestConflictsWithPolicy" if exc.conflicts_with_policy else "InvalidManifest",
            problems=exc.problems,
        ) from None
    except pipeline.ProvisioningFrozen as exc:
        raise ProblemError(status.HTTP_409_CONFLICT, str(exc), error="ProvisioningFrozen") from None
    await run_in_threadpool(
        provision_fleet.apply_async,
        kwargs={
            "manifest": manifest.model_dump(mode="json"),
            "job_id": job_id,
            "submitted_by": submitted_by,
        },
        task_id=job_id,
    )
    return JobAccepted(
        job_id=job_id,
        state="queued",
        total=manifest.total_agents,
        status_url=f"{PREFIX}/{job_id}",
    )


@router.get("/{job_id}", responses={404: {"description": "No such job."}})
def get_job(rt: RuntimeDep, _: Reader, job_id: str, agents: bool = True) -> dict[str, Any]:
    """State and per-agent progress: done / failed / pending of total."""
    progress = pipeline.job_progress(rt.sessions, job_id)
    if progress is None:
        raise ProblemError(
            status.HTTP_404_NOT_FOUND, f"no provisioning job {job_id!r}", error="NotFound"
        )
    return progress.as_dict(with_agents=agents)
