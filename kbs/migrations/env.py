# SPDX-License-Identifier: Apache-2.0
"""Alembic environment: migrations always run on a connection handed in by kbs.db.migrate."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
