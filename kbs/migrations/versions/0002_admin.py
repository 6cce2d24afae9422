# SPDX-License-Identifier: Apache-2.0
"""Key-admin features: resource versions, release policies, the audit trail.

* ``kbs_resources.version`` and ``kbs_resource_versions``: previous values of resources in
  the database backend (existing rows become version 1);
* ``kbs_release_policies``: per-resource release policies by path prefix;
* ``kbs_audit`` and its chain head ``kbs_audit_head`` (one row, seeded here).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: The chain's genesis "previous hash" (64 hex zeros), as kbs.audit.GENESIS_HASH.
GENESIS_HASH = "0" * 64


def upgrade() -> None:
    with op.batch_alter_table("kbs_resources") as batch:
        batch.add_column(sa.Column("version", sa.BigInteger, nullable=False, server_default="1"))
    op.create_table(
        "kbs_resource_versions",
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("version", sa.BigInteger, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "kbs_release_policies",
        sa.Column("prefix", sa.String(800), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=True),
        sa.Column("sha384", sa.String(96), nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("updated_by", sa.String(255), nullable=False),
    )
    op.create_table(
        "kbs_audit",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(255), nullable=True),
        sa.Column("client", sa.String(64), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("resource", sa.String(800), nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_kbs_audit_at", "kbs_audit", ["at"])
    op.create_index("ix_kbs_audit_kind", "kbs_audit", ["kind"])
    op.create_index("ix_kbs_audit_resource", "kbs_audit", ["resource"])
    op.create_index("ix_kbs_audit_request_id", "kbs_audit", ["request_id"])
    head = op.create_table(
        "kbs_audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS_HASH}])


def downgrade() -> None:
    op.drop_table("kbs_audit_head")
    for index in ("request_id", "resource", "kind", "at"):
        op.drop_index(f"ix_kbs_audit_{index}", table_name="kbs_audit")
    op.drop_table("kbs_audit")
    op.drop_table("kbs_release_policies")
    op.drop_table("kbs_resource_versions")
    with op.batch_alter_table("kbs_resources") as batch:
        batch.drop_column("version")
