"""outbox.handled_at, republished_at, republish_count: what reconciliation against a lost Redis needs.

``handled_at`` is set by the worker when a message's handler succeeded or the message was dead-lettered;
the relay's reconciliation pass reads published rows without it through a partial index, so handled rows
cost it nothing. Rows published before this revision are taken as handled (they were published under the
old guarantee, and otherwise every one of them would be checked and kept from the purge forever).

Revision ID: 0005_reconcile
Revises: 0004_idempotency_keys
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_reconcile"
down_revision = "0004_idempotency_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("handled_at", sa.DateTime(timezone=True)))
    op.add_column("outbox", sa.Column("republished_at", sa.DateTime(timezone=True)))
    op.add_column("outbox", sa.Column("republish_count", sa.Integer, nullable=False, server_default="0"))
    op.execute("UPDATE outbox SET handled_at = published_at WHERE published_at IS NOT NULL")
    op.create_index(
        "outbox_unhandled_idx",
        "outbox",
        ["published_at", "id"],
        postgresql_where=sa.text("published_at IS NOT NULL AND handled_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("outbox_unhandled_idx", table_name="outbox")
    op.drop_column("outbox", "republish_count")
    op.drop_column("outbox", "republished_at")
    op.drop_column("outbox", "handled_at")
