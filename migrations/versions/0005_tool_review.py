"""tool review: poisoning findings, quarantine, pinned definitions

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # Existing rows start unscanned (findings NULL): their first sync scans them and trusts
    # the clean ones, as it would a new tool.
    with op.batch_alter_table("tools") as batch:
        batch.add_column(sa.Column("findings", _json(), nullable=True))
        batch.add_column(sa.Column("severity", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("quarantined", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("approved_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("pending", _json(), nullable=True))
        batch.add_column(sa.Column("rejected_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tools") as batch:
        for column in ("rejected_hash", "pending", "approved_hash", "quarantined", "severity", "findings"):
            batch.drop_column(column)
