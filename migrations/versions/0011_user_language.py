"""The language a user's emails are written in, chosen at signup.

``users.language`` holds a language the worker has templates for (``en``, ``de``, ``ar``, …), negotiated
from the signup's ``language`` field or its ``Accept-Language`` header. Existing rows get ``en``, the
language every email was written in until now.

Revision ID: 0011_user_language
Revises: 0010_email_attempts
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_user_language"
down_revision = "0010_email_attempts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column("users", sa.Column("language", sa.String(35), nullable=False, server_default="en"))


def downgrade() -> None:
    op.drop_column("users", "language")
