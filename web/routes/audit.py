"""The audit log and compliance reports over HTTP."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, status
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import AwareDatetime, BeforeValidator

from fleet.identity import Permission, Principal
from web.app_auth import require
from web.deps import RuntimeDep
from web.problems import ProblemError

router = APIRouter(prefix="/api/v1", tags=["audit"])

Reader = Annotated[Principal, Depends(require(Permission.AUDIT_READ))]


def _not_a_number(value: Any) -> Any:
    # Lax validation reads 0.5 as a Unix time; a timestamp here is RFC 3339 text.
    if not isinstance(value, str) or re.fullmatch(r"[\d.eE+-]+", value.strip()):
        raise ValueError("expected an RFC 3339 date-time with a time zone, e.g. 2026-01-01T00:00Z")
    return value


Timestamp = Annotated[AwareDatetime | None, BeforeValidator(_not_a_number), Query()]
# A calendar month ("2026-05") or the days up to now ("30d").
PERIOD = r"^((19|20)\d{2}-(0[1-9]|1[0-2])|\d{1,4}d)$"


_UNPINNED: dict[int | str, dict[str, Any]] = {
    503: {"description": "No audit public key is pinned: nothing can be verified."}
}


@router.get("/audit/verify", responses=_UNPINNED)
def verify(rt: RuntimeDep, _: Reader) -> dict[str, Any]:
    """Re-check the chain and its signed checkpoints; ``ok`` false names the first bad entry."""
    from fleet.audit.signing import UnpinnedKey
    from fleet.audit.verify import verify_log

    try:
        return dict(verify_log(rt.audit_log).to_dict())
    except UnpinnedKey as exc:
        raise ProblemError(
            status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), error="unpinned_key"
        ) from None


@router.get("/audit/public-key", responses=_UNPINNED)
def public_key(rt: RuntimeDep, _: Reader) -> dict[str, str]:
    """The pinned key verify trusts (not whatever key file sits beside the database)."""
    from cryptography.hazmat.primitives import serialization

    from fleet.audit.signing import UnpinnedKey, key_id_of

    try:
        key = rt.audit_log.trusted_public_key()
    except UnpinnedKey as exc:
        raise ProblemError(
            status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), error="unpinned_key"
        ) from None
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    hex_key = (rt.audit_log.public_key or "").lower()
    return {"key_id": key_id_of(hex_key), "public_key": hex_key, "pem": pem}


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The export, as JSON lines or CSV.",
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        }
    },
)
def export(
    rt: RuntimeDep,
    _: Reader,
    since: Timestamp = None,
    until: Timestamp = None,
    fmt: Literal["jsonl", "csv"] = Query("jsonl", alias="format"),
) -> StreamingResponse:
    """Entries with hashes, checkpoints and the public key: verifiable by the recipient alone."""
    from fleet.audit.export import export_log

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


@router.get(
    "/reports/compliance",
    response_model=None,
    responses={
        200: {
            "description": "The report, as JSON or HTML.",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/html": {"schema": {"type": "string"}},
            },
        }
    },
)
def compliance(
    rt: RuntimeDep,
    _: Reader,
    fleet: Annotated[str, Query(min_length=1, max_length=128)],
    period: Annotated[str, Query(pattern=PERIOD)],
    fmt: Literal["json", "html"] = Query("json", alias="format"),
) -> dict[str, Any] | HTMLResponse:
    """Per article 9, 11-15: our own evidence (also written to files). The gateway
    has no compliance report to merge (real-gateway.md: get_compliance_report)."""
    from fleet.audit.compliance import produce_report, render_html

    try:
        report, _json_file, _html_file = produce_report(
            rt.settings, rt.audit_log, rt.approvals, fleet, period
        )
    except ValueError as exc:
        raise ProblemError(
            status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc), error="InvalidRequest"
        ) from None
    if fmt == "html":
        return HTMLResponse(render_html(report))
    return report
