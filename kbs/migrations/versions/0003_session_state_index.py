# SPDX-License-Identifier: Apache-2.0
"""An index on ``kbs_sessions (state, expires_at)``.

``/kbs/v0/auth`` refuses new sessions while ``[attestation_service]
max_unattested_sessions`` live sessions await attestation; the count of live ``authed``
sessions it needs is then a range scan of this index, stopped at the cap (index-only on
SQLite, and on PostgreSQL where the visibility map allows).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_kbs_sessions_state_expires_at", "kbs_sessions", ["state", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_kbs_sessions_state_expires_at", table_name="kbs_sessions")
