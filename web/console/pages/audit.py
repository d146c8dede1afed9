"""The audit page: verify status (intact, or the first bad entry), the last signed
checkpoint and what the witness holds, export (JSON lines or CSV, verifiable alone)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.responses import HTMLResponse

from fleet.identity import Permission
from web.console.render import page
from web.console.session import needs
from web.deps import get_runtime

router = APIRouter(prefix="/console/audit", include_in_schema=False)


def _status(rt: Any) -> dict[str, Any]:
    from fleet.audit.signing import UnpinnedKey
    from fleet.audit.verify import verify_log

    log = rt.audit_log
    try:
        verified: dict[str, Any] | None = dict(verify_log(log).to_dict())
        unpinned = None
    except UnpinnedKey as exc:
        verified, unpinned = None, str(exc)
    checkpoints = log.checkpoints()
    last = checkpoints[-1] if checkpoints else None
    witness: dict[str, Any] = {"configured": log.witness is not None}
    if log.witness is not None:
        records = log.witness.read()
        witness.update(
            source=records.source,
            checkpoints=len(records.checkpoints),
            last=records.checkpoints[-1] if records.checkpoints else None,
            heads=len(records.heads),
            last_head=records.heads[-1] if records.heads else None,
            unreadable=records.unreadable[:5],
        )
    return {"verify": verified, "unpinned": unpinned, "last": last, "witness": witness}


@router.get("", dependencies=[needs(Permission.AUDIT_READ)])
async def audit_page(request: Request) -> HTMLResponse:
    status = await run_in_threadpool(_status, get_runtime(request))
    return page(request, "audit.html", status)


@router.get("/export", dependencies=[needs(Permission.AUDIT_READ)])
def export(
    request: Request, fmt: Literal["jsonl", "csv"] = Query("jsonl", alias="format")
) -> StreamingResponse:
    from fleet.audit.export import export_log

    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 - closed by the stream
    export_log(get_runtime(request).audit_log, spool, fmt=fmt)
    spool.seek(0)

    def chunks() -> Iterator[bytes]:
        with spool:
            while block := spool.read(256 * 1024):
                yield block

    media = "application/x-ndjson" if fmt == "jsonl" else "text/csv"
    headers = {"Content-Disposition": f'attachment; filename="audit-export.{fmt}"'}
    return StreamingResponse(chunks(), media_type=media, headers=headers)
