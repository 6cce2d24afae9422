# SPDX-License-Identifier: Apache-2.0
"""The hot stores' inline SQLite path (kbs/hotsql.py) under another process's write lock."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kbs import db
from kbs.audit import AuditEvent
from kbs.errors import AuditUnavailableError
from kbs.hotsql import EngineSql, HotSqlError, HotTx, SqliteInline, _pyformat, for_engine
from support.kbs_app import AdminKey, running_kbs, settings_for, without_request_id

ERR = "https://github.com/confidential-containers/kbs/errors/"
AUTH = {"version": "0.4.0", "tee": "sample", "extra-params": ""}


def _settings(tmp_path: Path, admin_key: AdminKey, timeout_s: float):
    url = f"sqlite:///{tmp_path / 'data' / 'kbs.db'}"
    overrides = {"database": {"timeout_s": timeout_s}, "rate_limit": {"enabled": False}}
    return settings_for(tmp_path, admin_key, database_url=url, overrides=overrides)


def _lock(tmp_path: Path) -> sqlite3.Connection:
    """Another process's writer: holds the database write lock until closed."""
    holder = sqlite3.connect(tmp_path / "data" / "kbs.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


async def test_the_app_uses_the_inline_path_on_a_sqlite_file(
    tmp_path: Path, admin_key: AdminKey
) -> None:
    async with running_kbs(_settings(tmp_path, admin_key, 5.0)) as kbs:
        state = kbs.app.state.kbs
        assert isinstance(state.hot_sql, SqliteInline)
        assert isinstance(for_engine(state.engine), SqliteInline)


async def test_a_held_write_lock_is_waited_for_without_blocking_the_loop(
    tmp_path: Path, admin_key: AdminKey
) -> None:
    async with running_kbs(_settings(tmp_path, admin_key, 5.0)) as kbs:
        holder = _lock(tmp_path)
        auth = asyncio.create_task(kbs.http.post("/kbs/v0/auth", json=AUTH))
        # The loop keeps serving while /auth backs off (a read needs no write lock).
        await asyncio.sleep(0.2)
        health = await kbs.http.get("/healthz")
        assert health.status_code == 200
        assert not auth.done()
        holder.rollback()
        holder.close()
        response = await auth
    assert response.status_code == 200
    assert "kbs-session-id=" in response.headers["set-cookie"]


async def test_a_lock_held_past_the_database_timeout_is_503(
    tmp_path: Path, admin_key: AdminKey
) -> None:
    async with running_kbs(_settings(tmp_path, admin_key, 0.3)) as kbs:
        holder = _lock(tmp_path)
        try:
            response = await kbs.http.post("/kbs/v0/auth", json=AUTH)
        finally:
            holder.rollback()
            holder.close()
        assert response.status_code == 503
        body = without_request_id(response.json())
        assert body["type"] == ERR + "DatabaseUnavailable"
        assert "could not be stored" in body["detail"]
        # Once the lock is gone the same request succeeds.
        assert (await kbs.http.post("/kbs/v0/auth", json=AUTH)).status_code == 200


async def test_a_failed_audit_append_leaves_no_partial_chain(
    tmp_path: Path, admin_key: AdminKey
) -> None:
    """The append transaction rolls back whole when its BEGIN IMMEDIATE cannot get the lock."""
    async with running_kbs(_settings(tmp_path, admin_key, 0.2)) as kbs:
        audit = kbs.app.state.kbs.audit
        before = await audit.head()
        holder = _lock(tmp_path)
        try:
            with pytest.raises(AuditUnavailableError):
                await audit.append(
                    AuditEvent(kind="admin", action="test", outcome="ok"), at=kbs.clock.now()
                )
        finally:
            holder.rollback()
            holder.close()
        assert await audit.head() == before


def test_engine_sql_converts_named_parameters() -> None:
    assert _pyformat("SELECT a FROM t WHERE x = :x AND y LIKE '5%' AND z = :z_1") == (
        "SELECT a FROM t WHERE x = %(x)s AND y LIKE '5%%' AND z = %(z_1)s"
    )


async def test_reads_see_other_connections_commits_at_once(tmp_path: Path) -> None:
    """A read that stopped after its first row must not pin the reader's snapshot."""
    path = tmp_path / "rows.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    other.executemany("INSERT INTO t VALUES (?, ?)", [(1, "a"), (2, "b"), (3, "c")])
    sql = SqliteInline(path, timeout_s=1.0)
    try:
        assert await sql.fetch_one("SELECT v FROM t ORDER BY k", {}) == ("a",)
        other.execute("UPDATE t SET v = 'z' WHERE k = 1")
        assert await sql.fetch_one("SELECT v FROM t ORDER BY k", {}) == ("z",)
        assert await sql.execute("UPDATE t SET v = :v WHERE k = :k", {"v": "y", "k": 2}) == 1
        assert other.execute("SELECT v FROM t WHERE k = 2").fetchone() == ("y",)
        assert await sql.fetch_all("SELECT k FROM t ORDER BY k", {}) == [(1,), (2,), (3,)]
    finally:
        await sql.aclose()
        other.close()


async def test_engine_path_statements_and_transactions(tmp_path: Path) -> None:
    """EngineSql (PostgreSQL, in-memory SQLite) through an engine: same answers, rollback."""
    engine = db.make_async_engine(f"sqlite:///{tmp_path / 'engine.db'}")
    sql = EngineSql(engine)
    try:
        await sql.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)", {})
        assert await sql.execute("INSERT INTO t VALUES (:k, :v)", {"k": 1, "v": "a"}) == 1
        assert await sql.fetch_one("SELECT v FROM t WHERE k = :k", {"k": 1}) == ("a",)
        assert await sql.fetch_one("SELECT v FROM t WHERE k = :k", {"k": 9}) is None

        async def body(tx: HotTx) -> int:
            await tx.execute("UPDATE t SET v = :v WHERE k = 1", {"v": "b"})
            raise RuntimeError("abandon")

        with pytest.raises(RuntimeError):
            await sql.transaction(body)
        assert await sql.fetch_all("SELECT k, v FROM t", {}) == [(1, "a")]

        async def ok(tx: HotTx) -> tuple[object, ...] | None:
            await tx.execute("UPDATE t SET v = :v WHERE k = 1", {"v": "c"})
            return await tx.fetch_one("SELECT v FROM t WHERE k = 1", {})

        assert await sql.transaction(ok) == ("c",)
        assert await sql.fetch_all("SELECT k, v FROM t", {}) == [(1, "c")]
        with pytest.raises(HotSqlError):
            await sql.fetch_one("SELECT nope FROM t", {})
    finally:
        await engine.dispose()


def _tight_pool_engine(tmp_path: Path) -> AsyncEngine:
    """One pooled connection whose checkout gives up after 0.2 s (like `timeout_s`)."""
    return create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}",
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.2,
    )


async def _hold_connection(sql: EngineSql, seconds: float) -> tuple[object, ...] | None:
    async def body(tx: HotTx) -> tuple[object, ...] | None:
        row = await tx.fetch_one("SELECT 1", {})
        await asyncio.sleep(seconds)  # a busy event loop: the holder resumes late
        return row

    return await sql.transaction(body)


async def test_engine_path_queues_for_its_own_connections_instead_of_failing(
    tmp_path: Path,
) -> None:
    """More callers than pooled connections wait their turn past the checkout timeout.

    Each of four callers holds the only connection for 0.15 s, so the last one waits
    0.45 s, more than the pool's 0.2 s checkout timeout: without the queue in front of
    the pool it would fail (the negative control below shows it does).
    """
    engine = _tight_pool_engine(tmp_path)
    try:
        sql = EngineSql(engine)  # the pool's size (1) is the limit
        rows = await asyncio.gather(*(_hold_connection(sql, 0.15) for _ in range(4)))
        assert rows == [(1,)] * 4
        assert await sql.fetch_one("SELECT 2", {}) == (2,)
    finally:
        await engine.dispose()


async def test_engine_path_without_the_queue_fails_on_checkout_timeout(tmp_path: Path) -> None:
    """Control: a limit above the pool's size lets checkouts time out (HotSqlError)."""
    engine = _tight_pool_engine(tmp_path)
    try:
        sql = EngineSql(engine, max_connections=4)
        results = await asyncio.gather(
            *(_hold_connection(sql, 0.15) for _ in range(4)), return_exceptions=True
        )
        assert any(isinstance(r, HotSqlError) for r in results)
    finally:
        await engine.dispose()
