"""Fleet history rows for segments too: "fleet/segment" is longer than a fleet's name

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite rebuilds the table, PostgreSQL alters the column in place.
    with op.batch_alter_table("monitoring_fleet_sweeps") as batch:
        batch.alter_column(
            "fleet", existing_type=sa.String(length=128), type_=sa.String(length=200)
        )


def downgrade() -> None:
    with op.batch_alter_table("monitoring_fleet_sweeps") as batch:
        batch.alter_column(
            "fleet", existing_type=sa.String(length=200), type_=sa.String(length=128)
        )
