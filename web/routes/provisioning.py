"""Provisioning jobs over HTTP: POST a manifest (JSON or YAML), GET its progress."""

from __future__ import annotations

import uuid
from typing import Any

import yaml
from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel

from fleet.provisioning import pipeline
from fleet.provisioning.manifest import ManifestError
from tasks.provisioning import provision_fleet
from web.app_auth import require_token
from web.deps import RuntimeDep

router = APIRouter(
    prefix="/api/v1/provisioning-jobs", tags=["provisioning"], dependencies=[Depends(require_token)]
)

MAX_MANIFEST_BYTES = 2_000_000


class JobAccepted(BaseModel):
    job_id: str
    state: str
    total: int
    status_url: str


async def _manifest_from(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_MANIFEST_BYTES:
        raise HTTPException(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"manifest over {MAX_MANIFEST_BYTES} bytes"
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type not in (
        "application/json",
        "application/yaml",
        "application/x-yaml",
        "text/yaml",
        "text/x-yaml",
        "",
    ):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "send the manifest as application/json or application/yaml",
        )
    try:
        return yaml.safe_load(body.decode("utf-8"))  # JSON is YAML
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            {"problems": [f"(manifest): not valid JSON or YAML: {exc}"]},
        ) from None


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
async def create_job(request: Request, rt: RuntimeDep) -> JobAccepted:
    """Validate a fleet manifest and enqueue its provisioning; answers at once with the job id."""
    data = await _manifest_from(request)
    job_id = uuid.uuid4().hex
    try:
        manifest = pipeline.queue_job(rt.provisioning, data, job_id, submitted_by="api")
    except ManifestError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, {"problems": exc.problems}
        ) from None
    except pipeline.ProvisioningFrozen as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    provision_fleet.apply_async(
        kwargs={
            "manifest": manifest.model_dump(mode="json"),
            "job_id": job_id,
            "submitted_by": "api",
        },
        task_id=job_id,
    )
    return JobAccepted(
        job_id=job_id,
        state="queued",
        total=manifest.total_agents,
        status_url=f"/api/v1/provisioning-jobs/{job_id}",
    )


@router.get("/{job_id}")
def get_job(rt: RuntimeDep, job_id: str, agents: bool = True) -> dict[str, Any]:
    """State and per-agent progress: done / failed / pending of total."""
    progress = pipeline.job_progress(rt.sessions, job_id)
    if progress is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no provisioning job {job_id!r}")
    return progress.as_dict(with_agents=agents)
