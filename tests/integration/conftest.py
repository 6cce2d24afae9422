# SPDX-License-Identifier: Apache-2.0
"""Fixtures for tests that drive the whole application over HTTP."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from support.kbs_app import (
    SAMPLE_REFERENCE_VALUES,
    AdminKey,
    RunningKbs,
    make_admin_key,
    running_kbs,
    settings_for,
)


@pytest.fixture
def admin_key(tmp_path: Path) -> AdminKey:
    return make_admin_key(tmp_path)


@pytest.fixture
async def kbs(tmp_path: Path, admin_key: AdminKey) -> AsyncIterator[RunningKbs]:
    async with running_kbs(settings_for(tmp_path, admin_key), admin_key=admin_key) as running:
        yield running


@pytest.fixture
async def affirming_kbs(kbs: RunningKbs) -> RunningKbs:
    """A KBS where sample evidence is appraised as affirming."""
    admin = kbs.admin()
    await admin.set_reference_values(SAMPLE_REFERENCE_VALUES)
    return kbs


def postgres_url() -> str | None:
    url = os.environ.get("KBS_TEST_POSTGRES_URL")
    if url:
        return url
    if os.environ.get("KBS_TEST_REQUIRE_POSTGRES") == "1":
        pytest.fail("KBS_TEST_REQUIRE_POSTGRES=1 but KBS_TEST_POSTGRES_URL is not set")
    return None


@pytest.fixture
def pg_database_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import uuid  # noqa: PLC0415

    import psycopg  # noqa: PLC0415
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    base = postgres_url()
    if base is None:
        pytest.skip("set KBS_TEST_POSTGRES_URL to run PostgreSQL tests")
    name = f"kbs_test_{uuid.uuid4().hex[:12]}"
    admin_url = make_url(base).set(drivername="postgresql")
    conninfo = admin_url.render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
