"""verify_email_resends: the resend requests that passed the limits, one row each.

Revision ID: 0002_resend
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0002_resend"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "verify_email_resends",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("username", sa.String(100), nullable=False),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="verify_email_resends_pkey"),
        sa.UniqueConstraint("event_id", name="verify_email_resends_event_id_key"),
        sa.ForeignKeyConstraint(
            ["username"], ["users.username"], name="verify_email_resends_username_fkey", ondelete="CASCADE"
        ),
    )
    # The limits read one user's last day of requests.
    op.create_index(
        "verify_email_resends_user_time_idx", "verify_email_resends", ["username", "requested_at"]
    )


def downgrade() -> None:
    op.drop_table("verify_email_resends")
