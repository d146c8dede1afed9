"""The event stream consumer's cursor, so a lost Redis does not make it replay 24 h of events

Revision ID: 0009
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "monitoring_stream_cursors",
        sa.Column("stream", sa.String(length=128), nullable=False),
        sa.Column("last_event_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("stream", name=op.f("pk_monitoring_stream_cursors")),
    )


def downgrade() -> None:
    op.drop_table("monitoring_stream_cursors")
