"""The audit log and compliance reports over HTTP."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import HTMLResponse, StreamingResponse

from web.app_auth import require_token

router = APIRouter(prefix="/api/v1", tags=["audit"], dependencies=[Depends(require_token)])


def _log() -> Any:
    from tasks.audit import audit_log

    return audit_log()


@router.get("/audit/verify")
def verify() -> dict[str, Any]:
    """Re-check the chain and its signed checkpoints; ``ok`` false names the first bad entry."""
    from fleet.audit.verify import verify_log

    return dict(verify_log(_log()).to_dict())


@router.get("/audit/public-key")
def public_key() -> dict[str, str]:
    signer = _log().signer
    return {"key_id": signer.key_id, "public_key": signer.public_hex, "pem": signer.public_pem()}


@router.get("/audit/export")
def export(
    since: datetime | None = None,
    until: datetime | None = None,
    fmt: Literal["jsonl", "csv"] = Query("jsonl", alias="format"),
) -> StreamingResponse:
    """Entries with hashes, checkpoints and the public key: verifiable by the recipient alone."""
    from fleet.audit.export import export_log

    for value in (since, until):
        if value is not None and value.tzinfo is None:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "since/until need a time zone (e.g. 2026-01-01T00:00Z)",
            )
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 - closed by the stream
    export_log(_log(), spool, fmt=fmt, since=since, until=until)
    spool.seek(0)

    def chunks() -> Iterator[bytes]:
        with spool:
            while block := spool.read(256 * 1024):
                yield block

    media = "application/x-ndjson" if fmt == "jsonl" else "text/csv"
    headers = {"Content-Disposition": f'attachment; filename="audit-export.{fmt}"'}
    return StreamingResponse(chunks(), media_type=media, headers=headers)


@router.get("/reports/compliance", response_model=None)
def compliance(
    fleet: str,
    period: str,
    fmt: Literal["json", "html"] = Query("json", alias="format"),
    gateway: bool = True,
) -> dict[str, Any] | HTMLResponse:
    """Per article 9, 11, 12, 13, 14, 15: our evidence merged with the gateway's (also written to files)."""
    from config.settings import get_settings
    from fleet.audit.compliance import produce_report, render_html
    from tasks.audit import approvals, gateway_client

    call = gateway_client().call if gateway else None
    try:
        report, _, _ = produce_report(get_settings(), _log(), approvals(), fleet, period, call)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if fmt == "html":
        return HTMLResponse(render_html(report))
    return report
