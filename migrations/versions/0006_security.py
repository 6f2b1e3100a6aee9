"""Security hardening: notices sent, and addresses held by verified accounts only.

An unverified account no longer holds its address: ``users_email_lower_key`` becomes unique among verified
accounts only, and a plain index on ``lower(email)`` serves the look-ups of every claim (DESIGN §4).
``sent_notices`` is the worker's idempotency record for ``SendSignupNotice``, the email that tells an
address's owner that someone tried to sign up with it (DESIGN §8).

Revision ID: 0006_security
Revises: 0005_reconcile
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0006_security"
down_revision = "0005_reconcile"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("users_email_lower_idx", "users", [sa.text("lower(email)")])
    op.drop_index("users_email_lower_key", table_name="users")
    op.create_index(
        "users_email_lower_key",
        "users",
        [sa.text("lower(email)")],
        unique=True,
        postgresql_where=sa.text("is_email_verified"),
    )
    op.create_table(
        "sent_notices",
        sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "username",
            sa.String(100),
            sa.ForeignKey("users.username", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("sent_notices")
    # Fails if two accounts now claim one address: keep the oldest claim by hand before going back.
    op.drop_index("users_email_lower_key", table_name="users")
    op.create_index("users_email_lower_key", "users", [sa.text("lower(email)")], unique=True)
    op.drop_index("users_email_lower_idx", table_name="users")
