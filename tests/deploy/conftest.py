# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the deployment tests: the fresh-PostgreSQL-database fixture is shared."""

from __future__ import annotations

from integration.conftest import pg_database_url

__all__ = ["pg_database_url"]
