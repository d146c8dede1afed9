"""Task trees: a sub-agent's task names its parent and the root of its tree (issue 15)

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("work_tasks") as batch:
        batch.add_column(sa.Column("parent_task_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("root_task_id", sa.String(length=64), nullable=True))
    op.create_index("ix_work_tasks_root", "work_tasks", ["root_task_id"])


def downgrade() -> None:
    op.drop_index("ix_work_tasks_root", table_name="work_tasks")
    with op.batch_alter_table("work_tasks") as batch:
        batch.drop_column("root_task_id")
        batch.drop_column("parent_task_id")
