"""The per-mailbox daily cap: one row per email sent, by the SHA-256 of the mailbox it lands in.

Revision ID: 0008_mailbox_sends
Revises: 0007_code_digests
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_mailbox_sends"
down_revision = "0007_code_digests"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mailbox_sends",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("mailbox_sha256", sa.Text, nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("mailbox_sends_mailbox_idx", "mailbox_sends", ["mailbox_sha256", "sent_at"])
    op.create_index("mailbox_sends_sent_at_idx", "mailbox_sends", ["sent_at"])


def downgrade() -> None:
    op.drop_table("mailbox_sends")
