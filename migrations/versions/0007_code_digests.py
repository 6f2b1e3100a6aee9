"""Verification codes stored as SHA-256 digests.

``verify_emails.secret_code`` becomes ``code_sha256``: the hex SHA-256 of the code the email carries, so a
database reader holds nothing that verifies an address. Links already sent keep working: each stored code
is replaced by its digest.

Revision ID: 0007_code_digests
Revises: 0006_security
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0007_code_digests"
down_revision = "0006_security"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("verify_emails_secret_code_length", "verify_emails", type_="check")
    op.alter_column("verify_emails", "secret_code", new_column_name="code_sha256")
    op.execute(
        "UPDATE verify_emails SET code_sha256 = encode(sha256(convert_to(code_sha256, 'UTF8')), 'hex')"
    )
    op.create_check_constraint(
        "verify_emails_code_sha256_hex", "verify_emails", "code_sha256 ~ '^[0-9a-f]{64}$'"
    )


def downgrade() -> None:
    # The codes cannot come back from their digests: the links sent before stop working.
    op.drop_constraint("verify_emails_code_sha256_hex", "verify_emails", type_="check")
    op.alter_column("verify_emails", "code_sha256", new_column_name="secret_code")
    op.create_check_constraint(
        "verify_emails_secret_code_length", "verify_emails", "length(secret_code) >= 32"
    )
