"""Every attempt to send an email: when, which, and what the SMTP server answered.

``email_attempts`` lets a signup's timeline (``signup trace``, the console's signup page) show a 451 and the
retry that went through, after the message itself has left Redis. Nothing personal is kept: the event id,
the attempt's ordinal, the outcome, the SMTP reply code and its text with any address masked, cut to 200
characters (or our error's class and text). The index on ``attempted_at`` lets each send delete a few rows
older than the outbox's retention.

Revision ID: 0010_email_attempts
Revises: 0009_console
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0010_email_attempts"
down_revision = "0009_console"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "email_attempts",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("smtp_code", sa.SmallInteger),
        sa.Column("detail", sa.String(200)),
    )
    op.create_index("email_attempts_event_idx", "email_attempts", ["event_id", "attempt"])
    op.create_index("email_attempts_attempted_at_idx", "email_attempts", ["attempted_at"])


def downgrade() -> None:
    op.drop_index("email_attempts_attempted_at_idx", table_name="email_attempts")
    op.drop_index("email_attempts_event_idx", table_name="email_attempts")
    op.drop_table("email_attempts")
