"""request uses: the past requests behind nearest-query votes and co-usage

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_uses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request", sa.String(length=32), nullable=False),
        sa.Column("tool_id", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tool_id"], ["tools.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request", "tool_id", name="uq_request_uses_request_tool"),
    )
    op.create_index("ix_request_uses_created_at", "request_uses", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_request_uses_created_at", table_name="request_uses")
    op.drop_table("request_uses")
