"""Provisioning: jobs with a progress bar per job and per agent step; a manifest pasted or
uploaded is validated first (every problem by its path) and sent only once confirmed."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleet.identity import Permission
from fleet.provisioning import pipeline
from fleet.provisioning.manifest import ManifestError, parse_manifest_text
from fleet.provisioning.records import ProvisioningJob
from web.console.render import page
from web.console.session import CsrfChecked, needs
from web.deps import get_runtime

router = APIRouter(prefix="/console/provisioning", include_in_schema=False)

PATH = "/console/provisioning"
JOBS = 20
AGENTS_PER_PAGE = 100
MAX_MANIFEST_BYTES = 2 * 1024 * 1024


def _jobs(rt: Any, job: str | None, offset: int) -> dict[str, Any]:
    with rt.sessions() as s:
        ids = list(
            s.scalars(
                select(ProvisioningJob.job_id)
                .order_by(ProvisioningJob.created_at.desc())
                .limit(JOBS)
            )
        )
        submitted = {
            j.job_id: (j.submitted_by, j.created_at.isoformat())
            for j in s.scalars(select(ProvisioningJob).where(ProvisioningJob.job_id.in_(ids)))
        }
    jobs = []
    for job_id in ids:
        progress = pipeline.job_progress(rt.sessions, job_id, with_agents=False)
        if progress is not None:
            jobs.append({**progress.as_dict(False), "by_at": submitted.get(job_id)})
    detail = None
    if job:
        progress = pipeline.job_progress(rt.sessions, job)
        if progress is not None:
            detail = progress.as_dict()
            detail["agents"] = detail["agents"][offset : offset + AGENTS_PER_PAGE]
            detail["offset"] = offset
    return {"jobs": jobs, "detail": detail, "steps": pipeline.STEPS, "page": AGENTS_PER_PAGE}


@router.get("", dependencies=[needs(Permission.PROVISIONING_READ)])
async def jobs_page(
    request: Request,
    job: Annotated[str | None, Query(max_length=64)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    done: str = "",
) -> HTMLResponse:
    ctx = await run_in_threadpool(_jobs, get_runtime(request), job, offset)
    return page(request, "provisioning.html", {**ctx, "done": done[:300], "manifest": ""})


async def _text(manifest: str, upload: UploadFile | None) -> tuple[str, list[str]]:
    if upload is not None and upload.filename:
        raw = await upload.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            return "", [f"(manifest): larger than {MAX_MANIFEST_BYTES} bytes"]
        try:
            return raw.decode("utf-8"), []
        except UnicodeDecodeError:
            return "", ["(manifest): not UTF-8 text"]
    if not manifest.strip():
        return "", ["(manifest): paste a manifest or choose a file"]
    return manifest, []


@router.post("/validate", dependencies=[needs(Permission.PROVISIONING_SUBMIT)])
async def validate(
    request: Request,
    _: CsrfChecked,
    manifest: Annotated[str, Form(max_length=MAX_MANIFEST_BYTES)] = "",
    upload: UploadFile | None = None,
) -> HTMLResponse:
    """Nothing is sent: the problems by path, or what would be provisioned."""
    rt = get_runtime(request)
    text, problems = await _text(manifest, upload)
    summary = None
    if not problems:
        try:
            parsed = await run_in_threadpool(parse_manifest_text, text, rt.settings.policy)
            summary = {
                "fleet": parsed.fleet,
                "environment": parsed.environment,
                "total": parsed.total_agents,
                "groups": [g.model_dump(mode="json") for g in parsed.agents],
            }
        except ManifestError as exc:
            problems = list(exc.problems) or [str(exc)]
    ctx = await run_in_threadpool(_jobs, rt, None, 0)
    return page(
        request,
        "provisioning.html",
        {**ctx, "manifest": text, "problems": problems, "summary": summary, "done": ""},
        status_code=422 if problems else 200,
    )


@router.post("/submit", dependencies=[needs(Permission.PROVISIONING_SUBMIT)])
async def submit(
    request: Request,
    who: CsrfChecked,
    manifest: Annotated[str, Form(max_length=MAX_MANIFEST_BYTES)] = "",
) -> Response:
    """Validated again (the text may have been edited), recorded, then sent."""
    from tasks.provisioning import provision_fleet

    rt = get_runtime(request)
    job_id = uuid.uuid4().hex
    try:
        data = await run_in_threadpool(parse_manifest_text, manifest, rt.settings.policy)
        queued = await run_in_threadpool(
            pipeline.queue_job,
            rt.provisioning,
            data.model_dump(mode="json"),
            job_id,
            who.principal_id,
        )
    except (ManifestError, pipeline.ProvisioningFrozen) as exc:
        problems = list(getattr(exc, "problems", None) or [str(exc)])
        ctx = await run_in_threadpool(_jobs, rt, None, 0)
        return page(
            request,
            "provisioning.html",
            {**ctx, "manifest": manifest, "problems": problems, "summary": None, "done": ""},
            status_code=422,
        )
    await run_in_threadpool(
        provision_fleet.apply_async,
        kwargs={
            "manifest": queued.model_dump(mode="json"),
            "job_id": job_id,
            "submitted_by": who.principal_id,
        },
        task_id=job_id,
    )
    return RedirectResponse(f"{PATH}?job={job_id}", status_code=303)
