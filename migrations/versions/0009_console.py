"""The operator console: who replayed or discarded a dead letter, and the indexes its pages read through.

``dead_letter_actions`` keeps each replay or discard with the operator's name, so that a signup's timeline
(``signup trace``, the console's signup page) shows it after the dead letter itself is gone. The indexes let
the console's charts read the last hour of signups and sends, its search find a request id, and a signup's
timeline find its events by the payload's username, without reading the tables.

Revision ID: 0009_console
Revises: 0008_mailbox_sends
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_console"
down_revision = "0008_mailbox_sends"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letter_actions",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("operator", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("acted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("dead_letter_actions_message_idx", "dead_letter_actions", ["message_id"])
    op.create_index("users_created_at_idx", "users", ["created_at", "username"])
    op.create_index(
        "verify_emails_sent_at_idx",
        "verify_emails",
        ["sent_at"],
        postgresql_where=sa.text("sent_at IS NOT NULL"),
    )
    op.create_index("outbox_trace_id_idx", "outbox", ["trace_id"])
    op.create_index("outbox_payload_username_idx", "outbox", [sa.text("(payload ->> 'username')")])
    op.create_index(
        "outbox_republished_idx",
        "outbox",
        ["republished_at"],
        postgresql_where=sa.text("republished_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("outbox_republished_idx", table_name="outbox")
    op.drop_index("outbox_payload_username_idx", table_name="outbox")
    op.drop_index("outbox_trace_id_idx", table_name="outbox")
    op.drop_index("verify_emails_sent_at_idx", table_name="verify_emails")
    op.drop_index("users_created_at_idx", table_name="users")
    op.drop_table("dead_letter_actions")
