# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the storage backends: engines for SQLite and PostgreSQL, a fixed clock."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg.errors
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from storage_backends.sql import create_schema

#: The instant every test clock starts at.
T0 = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

# Schema names only need to be unique; CREATE SCHEMA (without IF NOT EXISTS) arbitrates
# between concurrent runs, so no randomness is needed.
_schema_counter = itertools.count()


class TickingClock:
    """A clock the test moves by hand."""

    def __init__(self, at: dt.datetime = T0) -> None:
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at


@pytest.fixture
def clock() -> TickingClock:
    return TickingClock()


def postgres_url() -> sa.URL:
    """The test server's URL, or skip (or fail, when PostgreSQL is required)."""
    url = os.environ.get("KBS_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("KBS_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail("KBS_TEST_REQUIRE_POSTGRES=1 but KBS_TEST_POSTGRES_URL is not set")
        pytest.skip(
            "PostgreSQL tests need KBS_TEST_POSTGRES_URL "
            "(e.g. postgresql://postgres@127.0.0.1:5432/test)"
        )
    return sa.make_url(url).set(drivername="postgresql+psycopg")


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'kbs.db'}")
    try:
        await create_schema(engine)
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def postgres_engine() -> AsyncIterator[AsyncEngine]:
    """An engine whose search_path is a fresh schema, dropped afterwards.

    The schema is in the engine's URL, so ``create_async_engine(engine.url)`` reaches it too.
    """
    url = postgres_url()
    admin = create_async_engine(url)
    try:
        schema = await _create_unique_schema(admin)
        try:
            engine = create_async_engine(
                url.update_query_dict({"options": f"-c search_path={schema}"})
            )
            try:
                await create_schema(engine)
                yield engine
            finally:
                await engine.dispose()
        finally:
            async with admin.begin() as conn:
                await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        await admin.dispose()


async def _create_unique_schema(admin: AsyncEngine) -> str:
    for _ in range(100):
        schema = f"kbs_storage_test_{os.getpid()}_{next(_schema_counter)}"
        try:
            async with admin.begin() as conn:
                await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        except ProgrammingError as exc:
            if not isinstance(exc.orig, psycopg.errors.DuplicateSchema):
                raise
            continue  # left over by a crashed run with the same pid
        return schema
    pytest.fail("could not create a unique PostgreSQL schema")
