"""Identities: accounts with roles, scoped service tokens, sign-in sessions

Revision ID: 0007
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identity_users",
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_identity_users")),
    )
    op.create_table(
        "identity_service_tokens",
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("secret_hash", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_identity_service_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_identity_service_tokens_name")),
    )
    op.create_table(
        "identity_sessions",
        sa.Column("token_digest", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["username"],
            ["identity_users.username"],
            name=op.f("fk_identity_sessions_username_identity_users"),
        ),
        sa.PrimaryKeyConstraint("token_digest", name=op.f("pk_identity_sessions")),
    )
    op.create_index("ix_identity_sessions_user", "identity_sessions", ["username"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_identity_sessions_user", table_name="identity_sessions")
    op.drop_table("identity_sessions")
    op.drop_table("identity_service_tokens")
    op.drop_table("identity_users")
