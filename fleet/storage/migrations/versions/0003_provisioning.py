"""provisioning jobs

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provisioning_jobs",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("fleet", sa.String(length=128), nullable=True),
        sa.Column("environment", sa.String(length=32), nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("manifest_digest", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("problems", sa.JSON(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("submitted_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_provisioning_jobs")),
    )
    op.create_table(
        "provisioning_job_agents",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.agent_id"],
            name=op.f("fk_provisioning_job_agents_agent_id_agents"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["provisioning_jobs.job_id"],
            name=op.f("fk_provisioning_job_agents_job_id_provisioning_jobs"),
        ),
        sa.PrimaryKeyConstraint("job_id", "agent_id", name=op.f("pk_provisioning_job_agents")),
    )
    with op.batch_alter_table("provisioning_job_agents", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_provisioning_job_agents_agent_id"), ["agent_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("provisioning_job_agents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_provisioning_job_agents_agent_id"))

    op.drop_table("provisioning_job_agents")
    op.drop_table("provisioning_jobs")
