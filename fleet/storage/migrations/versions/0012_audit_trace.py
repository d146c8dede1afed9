"""audit entries found by trace: an index on audit_entries.trace_id

Revision ID: 0012
Revises: 0011

The nullable ``trace_id`` (and ``span_id``) columns of ``audit_entries`` exist since
0002 and are inside each entry's hashed body; what was missing is finding a task's
entries by its trace id without scanning the log. Entries written before tracing have
NULL there and still verify (NULL was hashed as null).
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        batch_op.create_index("ix_audit_entries_trace_id", ["trace_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_entries_trace_id")
