# SPDX-License-Identifier: Apache-2.0
"""Initial schema: sessions, policies, reference values, signing keys, collateral, resources.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kbs_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("protocol_version", sa.String(16), nullable=False),
        sa.Column("tee", sa.String(32), nullable=False),
        sa.Column("nonce", sa.String(512), nullable=False),
        sa.Column("request_extra_params", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=True),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_kbs_sessions_expires_at", "kbs_sessions", ["expires_at"])
    op.create_table(
        "kbs_policies",
        sa.Column("namespace", sa.String(32), primary_key=True),
        sa.Column("policy_id", sa.String(255), primary_key=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("sha384", sa.String(96), nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "kbs_reference_values",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("version", sa.String(16), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=True),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "kbs_signing_keys",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("pem", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "kbs_collateral",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("fetched_at", sa.BigInteger, nullable=False),
        sa.Column("next_update", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "kbs_resources",
        sa.Column("path", sa.String(800), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "kbs_resources",
        "kbs_collateral",
        "kbs_signing_keys",
        "kbs_reference_values",
        "kbs_policies",
    ):
        op.drop_table(table)
    op.drop_index("ix_kbs_sessions_expires_at", table_name="kbs_sessions")
    op.drop_table("kbs_sessions")
