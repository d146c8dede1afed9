"""The audit trail: a tamper-evident, hash-chained log of every action taken on an agent or a fleet.

Producer API — all a provisioning step, an escalation or an approval needs::

    from fleet import audit

    audit.record(
        actor="fleet-commander/escalation",     # who or what acted ("user:alice" for people)
        action="freeze_agent",                  # what was done (the approval matrix's action names)
        subject=agent_id,                       # an agent id, or audit.fleet_subject("demo")
        fleet="demo",                           # optional, for per-fleet reports
        details={"tier": 4, "balance": "3.20"}, # JSON; money and ratios as strings, no floats
        article=audit.Article.HUMAN_OVERSIGHT,  # default Art. 12 (record-keeping)
        approval=audit.ApprovalState.APPROVED,  # default NONE; approval_id="…" when there is one
        trace=trace_context,                    # has .trace_id/.span_id (or trace_id=, span_id=)
        clock=clock,                            # or time=…; default: now
    )

Several entries from one unit of work go as one queue message::

    with audit.batch():
        for step in steps:
            audit.record(...)

A producer that prefers to pass events explicitly builds them with
:func:`build_event` and hands them to :func:`emit`.

Rules the event enforces at the producer, so a mistake fails in its own tests:
details may not contain floats (RFC 8785 hashing must not depend on how a
number prints; pass ``Decimal`` or a string), integers beyond 2**53, or objects
that are not JSON; any key that looks like a credential (``*key*``,
``*secret*``, ``*token*``, ``*password*``…, except names that only describe
one, like ``key_id`` or ``key_rotated_at``) has its value replaced by
``"[redacted]"``. Every event has an ``event_id``; appending is idempotent on it.

Where events go: ``record`` hands them to the process's sink, which the
process's runtime installs (``fleet.runtime``: the ``audit`` queue). The audit worker appends them
in batches to the chain (:mod:`fleet.audit.log`), signs checkpoints
(:mod:`fleet.audit.signing`), publishes checkpoints and heads to a witness
outside the data directory (:mod:`fleet.audit.witness`), mirrors them to the
gateway through an outbox (:mod:`fleet.audit.mirror`), archives them after the retention period
(:mod:`fleet.audit.retention`); :mod:`fleet.audit.verify` and
:mod:`fleet.audit.export` check and publish them. Tests use ``audit.capture()``.
"""

from fleet.audit.events import (
    REDACTED,
    ApprovalState,
    Article,
    AuditEvent,
    build_event,
    clean_details,
    fleet_subject,
)
from fleet.audit.sinks import (
    AuditNotConfigured,
    Sink,
    batch,
    capture,
    current_sink,
    emit,
    record,
    use_sink,
)

__all__ = [
    "REDACTED",
    "ApprovalState",
    "Article",
    "AuditEvent",
    "AuditNotConfigured",
    "Sink",
    "batch",
    "build_event",
    "capture",
    "clean_details",
    "current_sink",
    "emit",
    "fleet_subject",
    "record",
    "use_sink",
]
