# SPDX-License-Identifier: Apache-2.0
"""Migration 0002 on a database that already holds resources (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from kbs import db
from storage_backends import ResourceDesc, SqlBackend


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kbs.db'}"
    return str(request.getfixturevalue("pg_database_url"))


async def test_upgrade_keeps_resources_as_version_1(database_url: str) -> None:
    db.migrate(database_url, "0001")
    engine = db.make_sync_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO kbs_resources (path, data, created_at, updated_at) "
                    "VALUES ('cai/key/old', :d, 1, 2)"
                ),
                {"d": b"before 0002"},
            )
    finally:
        engine.dispose()
    db.migrate(database_url)
    async_engine = db.make_async_engine(database_url)
    try:
        async with async_engine.connect() as conn:
            head = (await conn.execute(sa.select(db.audit_head))).one()
            assert (head.id, head.seq, head.hash) == (1, 0, "0" * 64)
        backend = SqlBackend(async_engine, clock=lambda: db.from_millis(5000), keep_versions=3)
        desc = ResourceDesc("cai", "key", "old")
        value = await backend.read(desc)
        assert (value.data, value.version) == (b"before 0002", "1")
        assert await backend.put(desc, b"after") == "2"
        assert await backend.get_version(desc, "1") == b"before 0002"
    finally:
        await async_engine.dispose()
