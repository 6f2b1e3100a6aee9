"""outbox.trace_context: the W3C trace context of the span that wrote the row.

Revision ID: 0003_trace_context
Revises: 0002_resend
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003_trace_context"
down_revision = "0002_resend"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: adding it rewrites nothing, and rows written before it simply have none.
    op.add_column("outbox", sa.Column("trace_context", JSONB))


def downgrade() -> None:
    op.drop_column("outbox", "trace_context")
