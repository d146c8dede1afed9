"""The audit log and compliance reports over HTTP."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import HTMLResponse, StreamingResponse

from web.app_auth import require_token
from web.deps import RuntimeDep

router = APIRouter(prefix="/api/v1", tags=["audit"], dependencies=[Depends(require_token)])


@router.get("/audit/verify")
def verify(rt: RuntimeDep) -> dict[str, Any]:
    """Re-check the chain and its signed checkpoints; ``ok`` false names the first bad entry."""
    from fleet.audit.signing import UnpinnedKey
    from fleet.audit.verify import verify_log

    try:
        return dict(verify_log(rt.audit_log).to_dict())
    except UnpinnedKey as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None


@router.get("/audit/public-key")
def public_key(rt: RuntimeDep) -> dict[str, str]:
    """The pinned key verify trusts (not whatever key file sits beside the database)."""
    from cryptography.hazmat.primitives import serialization

    from fleet.audit.signing import UnpinnedKey, key_id_of

    try:
        key = rt.audit_log.trusted_public_key()
    except UnpinnedKey as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    hex_key = (rt.audit_log.public_key or "").lower()
    return {"key_id": key_id_of(hex_key), "public_key": hex_key, "pem": pem}


@router.get("/audit/export")
def export(
    rt: RuntimeDep,
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
    export_log(rt.audit_log, spool, fmt=fmt, since=since, until=until)
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
    rt: RuntimeDep,
    fleet: str,
    period: str,
    fmt: Literal["json", "html"] = Query("json", alias="format"),
) -> dict[str, Any] | HTMLResponse:
    """Per article 9, 11-15: our own evidence (also written to files). The gateway
    has no compliance report to merge (real-gateway.md: get_compliance_report)."""
    from fleet.audit.compliance import produce_report, render_html

    try:
        report, _, _ = produce_report(rt.settings, rt.audit_log, rt.approvals, fleet, period)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if fmt == "html":
        return HTMLResponse(render_html(report))
    return report
