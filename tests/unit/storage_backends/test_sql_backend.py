# SPDX-License-Identifier: Apache-2.0
"""SqlBackend: timestamps from the injected clock, sharing between replicas, the schema."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kbs.hotsql import for_engine
from storage_backends import (
    ResourceDesc,
    ResourceNotFoundError,
    SqlBackend,
    StorageUnavailableError,
)
from storage_backends.sql import (
    TABLE_NAME,
    create_schema,
    define_resources_table,
    metadata,
    resources_table,
)

KEY = ResourceDesc("default", "key", "model-1")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> AsyncEngine:
    return request.getfixturevalue(f"{request.param}_engine")


async def rows(engine: AsyncEngine) -> list[tuple[object, ...]]:
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(resources_table).order_by(resources_table.c.path))
        return [tuple(row) for row in result]


async def test_row_shape_and_timestamps(engine: AsyncEngine, clock) -> None:
    t0 = clock.at
    backend = SqlBackend(engine, clock=clock)
    await backend.put(KEY, b"v1")
    epoch = int(t0.timestamp())
    assert await rows(engine) == [("default/key/model-1", b"v1", epoch, epoch, 1)]
    clock.at = t0 + dt.timedelta(seconds=90, microseconds=999_999)
    await backend.put(KEY, b"v2")
    # created_at survives the upsert; updated_at moves, rounded down to whole seconds; the
    # version counts puts.
    assert await rows(engine) == [("default/key/model-1", b"v2", epoch, epoch + 90, 2)]


async def test_clock_in_another_zone(engine: AsyncEngine, clock) -> None:
    zone = dt.timezone(dt.timedelta(hours=-5))
    await SqlBackend(engine, clock=lambda: clock.at.astimezone(zone)).put(KEY, b"v")
    assert (await rows(engine))[0][2] == int(clock.at.timestamp())


async def test_naive_clock_is_refused(engine: AsyncEngine, clock) -> None:
    naive = clock.at.replace(tzinfo=None)
    with pytest.raises(StorageUnavailableError):
        await SqlBackend(engine, clock=lambda: naive).put(KEY, b"v")
    assert await rows(engine) == []


async def test_replicas_share_resources(engine: AsyncEngine, clock) -> None:
    # Two KBS replicas: separate backends (and here separate pools) over one database.
    first = SqlBackend(engine, clock=clock)
    second_engine = create_async_engine(engine.url)
    try:
        second = SqlBackend(second_engine, clock=clock)
        await first.put(KEY, b"from first")
        assert await second.get(KEY) == b"from first"
        await second.put(KEY, b"from second")
        assert await first.get(KEY) == b"from second"
        await second.delete(KEY)
        with pytest.raises(ResourceNotFoundError):
            await first.get(KEY)
    finally:
        await second_engine.dispose()


async def test_invalid_rows_are_not_listed(
    engine: AsyncEngine, clock, caplog: pytest.LogCaptureFixture
) -> None:
    backend = SqlBackend(engine, clock=clock)
    await backend.put(KEY, b"ok")
    async with engine.begin() as conn:
        for path in ("a/b", "../etc/passwd", "a/.b/c", "a/b/c/d", ""):
            await conn.execute(
                sa.insert(resources_table).values(path=path, data=b"x", created_at=0, updated_at=0)
            )
    with caplog.at_level(logging.WARNING, logger="storage_backends.sql"):
        assert await backend.list() == [KEY]
    assert "invalid resource path" in caplog.text


async def test_check_fails_without_the_table(tmp_path: Path, clock) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    try:
        backend = SqlBackend(engine, clock=clock)
        with pytest.raises(StorageUnavailableError, match="sql backend check failed"):
            await backend.check()
        await create_schema(engine)
        await create_schema(engine)  # idempotent
        await backend.check()
        await backend.aclose()
        await backend.check()  # aclose leaves the caller's engine alone
    finally:
        await engine.dispose()


async def test_unreachable_database_is_unavailable(tmp_path: Path, clock) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    try:
        backend = SqlBackend(engine, clock=clock)
        with pytest.raises(StorageUnavailableError, match="sql backend get failed"):
            await backend.get(KEY)
    finally:
        await engine.dispose()


def test_unsupported_dialect_is_rejected(clock) -> None:
    fake = SimpleNamespace(dialect=SimpleNamespace(name="mysql"))
    with pytest.raises(ValueError, match="unsupported SQL dialect"):
        SqlBackend(fake, clock=clock)  # type: ignore[arg-type]


def test_table_definition_for_migrations() -> None:
    assert metadata.tables[TABLE_NAME] is resources_table
    app_metadata = sa.MetaData()
    table = define_resources_table(app_metadata)
    assert app_metadata.tables[TABLE_NAME] is table
    assert [c.name for c in table.columns] == [
        "path",
        "data",
        "created_at",
        "updated_at",
        "version",
    ]
    assert [c.name for c in table.primary_key] == ["path"]
    assert isinstance(table.c.data.type, sa.LargeBinary)
    assert isinstance(table.c.created_at.type, sa.BigInteger)
    assert not any(c.nullable for c in table.columns)


async def test_plain_sql_reader_serves_reads_like_the_engine(engine: AsyncEngine, clock) -> None:
    """``read_row`` (the app's hot path) answers what the engine path answers."""
    hot = for_engine(engine)
    calls: list[str] = []

    async def read_row(sql: str, params: Any) -> tuple[Any, ...] | None:
        calls.append(sql)
        return await hot.fetch_one(sql, params)

    fast = SqlBackend(engine, clock=clock, keep_versions=2, read_row=read_row)
    slow = SqlBackend(engine, clock=clock, keep_versions=2)
    try:
        with pytest.raises(ResourceNotFoundError):
            await fast.read(KEY)
        await fast.put(KEY, b"v1")
        version = await slow.put(KEY, b"v2")
        assert await fast.read(KEY) == await slow.read(KEY)
        assert (await fast.read(KEY)).data == b"v2"
        assert (await fast.read(KEY)).version == version
        await slow.delete(KEY)
        with pytest.raises(ResourceNotFoundError):
            await fast.read(KEY)
        assert calls  # the reader, not the engine, served the reads
    finally:
        await hot.aclose()


async def test_plain_sql_reader_failure_is_storage_unavailable(
    sqlite_engine: AsyncEngine, clock
) -> None:
    async def broken(sql: str, params: Any) -> tuple[Any, ...] | None:
        raise RuntimeError("database is gone")

    backend = SqlBackend(sqlite_engine, clock=clock, read_row=broken)
    await backend.put(KEY, b"v")
    with pytest.raises(StorageUnavailableError):
        await backend.read(KEY)
