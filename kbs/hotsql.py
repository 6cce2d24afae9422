# SPDX-License-Identifier: Apache-2.0
"""Plain-SQL access for the per-request hot paths (sessions, policies, audit appends).

SQLAlchemy Core builds, compiles and caches a statement object on every call, and
``aiosqlite`` hands every statement to a worker thread and back: together they were half
of a guest flow's server time. The few statements a guest flow runs are written out here
as SQL text with ``:name`` parameters and run

* on a SQLite file: **inline** on the event loop through two ``sqlite3`` connections (one
  for reads, one for writes). A statement on a local WAL database takes microseconds; the
  busy timeout is short (:data:`SQLITE_BUSY_SLICE_MS`) so a write lock held by another
  process never stalls the loop, and a busy statement is retried after an ``asyncio``
  back-off until the database timeout has passed;
* on anything else (PostgreSQL, in-memory SQLite): through the application's SQLAlchemy
  engine with ``exec_driver_sql``, which keeps its pool and pre-ping but skips statement
  construction and compilation. The hot paths take at most ``pool_size`` connections at
  once and the others **queue** for one (first come, first served, no time limit): under
  overload a request waits for a connection its own process holds instead of failing once
  the pool's checkout timeout (``[database] timeout_s``, meant to detect an unreachable
  database) has passed. The pool's overflow stays free for the cold paths, and opening a
  connection still fails after ``timeout_s``.

Schema, migrations and the cold paths (admin writes, listings) stay on SQLAlchemy.
Nothing is cached here: every call reads the database, so replicas sharing it always
agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import QueuePool

_logger = logging.getLogger(__name__)

__all__ = ["EngineSql", "HotSql", "HotSqlError", "HotTx", "SqliteInline", "for_engine"]

T = TypeVar("T")
Params = Mapping[str, Any]
Row = tuple[Any, ...]

#: How long one SQLite statement may wait for another process's lock before the event
#: loop gets control back (milliseconds).
SQLITE_BUSY_SLICE_MS: Final = 2
#: First and largest back-off between busy retries, seconds.
SQLITE_BACKOFF_FIRST_S: Final = 0.001
SQLITE_BACKOFF_MAX_S: Final = 0.05

_NAMED_PARAM: Final = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")


class HotSqlError(Exception):
    """The database could not run a statement (callers map it to their own error)."""


class HotTx(Protocol):
    """Statements inside one write transaction."""

    async def fetch_one(self, sql: str, params: Params) -> Row | None:
        """The first row of ``sql``, or ``None``.

        Raises:
            HotSqlError: the statement failed.
        """
        ...

    async def execute(self, sql: str, params: Params) -> int:
        """Run ``sql``; return the number of rows it changed.

        Raises:
            HotSqlError: the statement failed.
        """
        ...

    async def execute_many(self, sql: str, params: Sequence[Params]) -> None:
        """Run ``sql`` once for each parameter set, in order.

        Raises:
            HotSqlError: a statement failed.
        """
        ...


class HotSql(Protocol):
    """Single statements (each its own transaction) and retried write transactions."""

    async def fetch_one(self, sql: str, params: Params) -> Row | None:
        """The first row of a read, or ``None``.

        Raises:
            HotSqlError: the database could not be read.
        """
        ...

    async def fetch_all(self, sql: str, params: Params) -> list[Row]:
        """Every row of a read.

        Raises:
            HotSqlError: the database could not be read.
        """
        ...

    async def execute(self, sql: str, params: Params) -> int:
        """Run one write on its own; return the number of rows it changed.

        Raises:
            HotSqlError: the database could not be written.
        """
        ...

    async def transaction(self, body: Callable[[HotTx], Awaitable[T]]) -> T:
        """Run ``body`` in one write transaction: committed if it returns, else rolled back.

        ``body`` must not await anything but the statements of the transaction it is
        given (on SQLite they run inline, and a held write lock must not wait on I/O).

        Raises:
            HotSqlError: the transaction could not be run or committed.
        """
        ...

    async def aclose(self) -> None:
        """Release the connections (the engine, if any, belongs to the caller)."""
        ...


# --------------------------------------------------------------------------- SQLite


def _is_busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def _one(conn: sqlite3.Connection, sql: str, params: Params) -> Row | None:
    # The cursor is closed at once: a statement left open would keep the connection's
    # read snapshot, and a later read would miss other processes' commits.
    cursor = conn.execute(sql, params)
    try:
        row: Row | None = cursor.fetchone()
    finally:
        cursor.close()
    return row


def _all(conn: sqlite3.Connection, sql: str, params: Params) -> list[Row]:
    cursor = conn.execute(sql, params)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def fetch_one(self, sql: str, params: Params) -> Row | None:
        try:
            return _one(self._conn, sql, params)
        except sqlite3.Error as exc:
            raise HotSqlError(str(exc)) from exc

    async def execute(self, sql: str, params: Params) -> int:
        try:
            return self._conn.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise HotSqlError(str(exc)) from exc

    async def execute_many(self, sql: str, params: Sequence[Params]) -> None:
        try:
            self._conn.executemany(sql, params)
        except sqlite3.Error as exc:
            raise HotSqlError(str(exc)) from exc


class SqliteInline:
    """A SQLite file through ``sqlite3``, inline on the event loop (see module doc)."""

    def __init__(self, path: Path, *, timeout_s: float) -> None:
        """Open a reader and a writer connection to the database at ``path``."""
        self._timeout_s = timeout_s
        self._reader = self._connect(path)
        self._writer = self._connect(path)
        # One statement or transaction at a time on the writer connection.
        self._write_lock = asyncio.Lock()

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        # isolation_level=None: autocommit; transactions are opened explicitly.
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=SQLITE_BUSY_SLICE_MS / 1000
        )
        conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SLICE_MS}")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    async def _retrying(self, run: Callable[[], T]) -> T:
        """``run()`` until it is not busy or the database timeout has passed."""
        deadline = time.monotonic() + self._timeout_s
        backoff = SQLITE_BACKOFF_FIRST_S
        while True:
            try:
                return run()
            except sqlite3.Error as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise HotSqlError(str(exc)) from exc
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, SQLITE_BACKOFF_MAX_S)

    async def fetch_one(self, sql: str, params: Params) -> Row | None:
        """See :meth:`HotSql.fetch_one`."""
        return await self._retrying(lambda: _one(self._reader, sql, params))

    async def fetch_all(self, sql: str, params: Params) -> list[Row]:
        """See :meth:`HotSql.fetch_all`."""
        return await self._retrying(lambda: _all(self._reader, sql, params))

    async def execute(self, sql: str, params: Params) -> int:
        """See :meth:`HotSql.execute`."""
        async with self._write_lock:
            return await self._retrying(lambda: self._writer.execute(sql, params).rowcount)

    async def transaction(self, body: Callable[[HotTx], Awaitable[T]]) -> T:
        """See :meth:`HotSql.transaction`.

        ``BEGIN IMMEDIATE`` takes the database write lock before anything is read (it is
        the only statement that may find the database busy, and it is retried); the
        statements after it therefore see the newest committed state.
        """
        conn = self._writer
        async with self._write_lock:
            await self._retrying(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                result = await body(_SqliteTx(conn))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

    async def aclose(self) -> None:
        """See :meth:`HotSql.aclose`."""
        self._reader.close()
        self._writer.close()


# --------------------------------------------------------------------------- engine


@functools.lru_cache(maxsize=256)
def _pyformat(sql: str) -> str:
    """``:name`` parameters as ``%(name)s`` (psycopg), literal ``%`` doubled."""
    return _NAMED_PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


class _EngineTx:
    def __init__(self, conn: AsyncConnection, convert: Callable[[str], str]) -> None:
        self._conn = conn
        self._convert = convert

    async def fetch_one(self, sql: str, params: Params) -> Row | None:
        try:
            row = (await self._conn.exec_driver_sql(self._convert(sql), dict(params))).first()
        except SQLAlchemyError as exc:
            raise HotSqlError(type(exc).__name__) from exc
        return None if row is None else tuple(row)

    async def fetch_all(self, sql: str, params: Params) -> list[Row]:
        try:
            result = await self._conn.exec_driver_sql(self._convert(sql), dict(params))
        except SQLAlchemyError as exc:
            raise HotSqlError(type(exc).__name__) from exc
        return [tuple(row) for row in result.all()]

    async def execute(self, sql: str, params: Params) -> int:
        try:
            result = await self._conn.exec_driver_sql(self._convert(sql), dict(params))
        except SQLAlchemyError as exc:
            raise HotSqlError(type(exc).__name__) from exc
        return int(result.rowcount or 0)

    async def execute_many(self, sql: str, params: Sequence[Params]) -> None:
        if not params:
            return
        try:
            await self._conn.exec_driver_sql(self._convert(sql), [dict(p) for p in params])
        except SQLAlchemyError as exc:
            raise HotSqlError(type(exc).__name__) from exc


class EngineSql:
    """The same statements through an SQLAlchemy async engine (PostgreSQL, in-memory)."""

    def __init__(self, engine: AsyncEngine, *, max_connections: int | None = None) -> None:
        """Use ``engine``'s pool; its driver's parameter style is derived from it.

        ``max_connections`` (default: the pool's ``pool_size``, if it has one) caps the
        connections these statements hold at once; more callers wait in turn (see the
        module doc).
        """
        self._engine = engine
        pyformat = engine.dialect.paramstyle == "pyformat"
        self._convert: Callable[[str], str] = _pyformat if pyformat else _identity
        limit = max_connections if max_connections is not None else _pool_size(engine)
        self._gate: asyncio.Semaphore | contextlib.nullcontext[None] = (
            asyncio.Semaphore(limit) if limit is not None else contextlib.nullcontext()
        )

    # Single statements run in autocommit: each is its own transaction either way, and
    # the driver then sends no BEGIN and no COMMIT/ROLLBACK (two round trips fewer).

    @contextlib.asynccontextmanager
    async def _autocommit(self) -> AsyncIterator[_EngineTx]:
        """A gated pool connection in autocommit; driver errors become :class:`HotSqlError`."""
        try:
            async with self._gate, self._engine.connect() as conn:
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                yield _EngineTx(auto, self._convert)
        except SQLAlchemyError as exc:
            raise HotSqlError(type(exc).__name__) from exc

    async def fetch_one(self, sql: str, params: Params) -> Row | None:
        """See :meth:`HotSql.fetch_one`."""
        async with self._autocommit() as tx:
            return await tx.fetch_one(sql, params)

    async def fetch_all(self, sql: str, params: Params) -> list[Row]:
        """See :meth:`HotSql.fetch_all`."""
        async with self._autocommit() as tx:
            return await tx.fetch_all(sql, params)

    async def execute(self, sql: str, params: Params) -> int:
        """See :meth:`HotSql.execute`."""
        async with self._autocommit() as tx:
            return await tx.execute(sql, params)

    async def transaction(self, body: Callable[[HotTx], Awaitable[T]]) -> T:
        """See :meth:`HotSql.transaction`."""
        try:
            async with self._gate, self._engine.begin() as conn:
                return await body(_EngineTx(conn, self._convert))
        except SQLAlchemyError as exc:
            raise HotSqlError(type(exc).__name__) from exc

    async def aclose(self) -> None:
        """See :meth:`HotSql.aclose` (the engine is disposed by its owner)."""


def _identity(sql: str) -> str:
    return sql


def _pool_size(engine: AsyncEngine) -> int | None:
    """The ``pool_size`` of a queue pool; ``None`` for pools without one (SQLite)."""
    pool = engine.sync_engine.pool
    return pool.size() if isinstance(pool, QueuePool) else None


def for_engine(engine: AsyncEngine, *, timeout_s: float = 5.0) -> HotSql:
    """The fastest :class:`HotSql` for the database behind ``engine``."""
    url = engine.url
    if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
        return SqliteInline(Path(url.database or ""), timeout_s=timeout_s)
    return EngineSql(engine)
