# SPDX-License-Identifier: Apache-2.0
"""Secrets in a SQL table, shared by every KBS replica that uses the same database.

One row per resource in ``kbs_resources``::

    path        TEXT PRIMARY KEY   -- "<repository>/<type>/<tag>"
    data        BLOB / BYTEA       -- the secret, as given
    created_at  BIGINT             -- epoch seconds, from the injected clock
    updated_at  BIGINT             -- epoch seconds, from the injected clock
    version     BIGINT             -- 1 on the first put, +1 on each put

and, with ``keep_versions > 0``, the values it replaced in ``kbs_resource_versions``::

    path, version  PRIMARY KEY     -- the resource and the version number it had
    data           BLOB / BYTEA
    created_at     BIGINT          -- when that version was stored

The tables are defined on :data:`metadata` (or on the application's own ``MetaData``
through :func:`define_resources_table`) so the application's alembic migrations create
them; :func:`create_schema` is for tests and throwaway databases. SQLite
(``sqlite+aiosqlite``) and PostgreSQL (``postgresql+psycopg``) are supported.

``put`` is one transaction: copy the current row into the history, upsert the new value
with ``version + 1``, prune the history to ``keep_versions``. Concurrent writers of one
path are serialised: on PostgreSQL by a transaction-level advisory lock on the path, on
SQLite by the database write lock, which the first statement (a write) takes before it
reads anything, so no writer archives a stale row.
(Trustee's ``Postgres`` key-value store keeps ``key``/``value`` columns in a table per
namespace; this table is ours and is not shared with a reference KBS.)
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from storage_backends.base import (
    DEFAULT_MAX_RESOURCE_BYTES,
    ResourceDesc,
    ResourceInfo,
    StorageBackend,
    VersionedValue,
    VersionInfo,
)
from storage_backends.errors import (
    InvalidResourcePathError,
    ResourceConflictError,
    ResourceNotFoundError,
    UnsupportedOperationError,
)

_logger = logging.getLogger(__name__)

#: Runs one read with ``:name`` parameters and returns its first row, or ``None``
#: (for instance the application's plain-SQL hot path); any exception it raises
#: becomes :class:`StorageUnavailableError`.
RowReader = Callable[[str, Mapping[str, Any]], Awaitable[tuple[Any, ...] | None]]

#: The guest path's read, as plain SQL for a :data:`RowReader` (same columns as
#: :meth:`SqlBackend._read` builds with SQLAlchemy).
_READ_SQL: Final = "SELECT data, version FROM kbs_resources WHERE path = :path"

__all__ = [
    "TABLE_NAME",
    "VERSIONS_TABLE_NAME",
    "SqlBackend",
    "create_schema",
    "define_resource_versions_table",
    "define_resources_table",
    "metadata",
    "resource_versions_table",
    "resources_table",
]

#: Name of the resources table.
TABLE_NAME: Final = "kbs_resources"
#: Name of the table of previous versions.
VERSIONS_TABLE_NAME: Final = "kbs_resource_versions"

#: Dialects with an ``INSERT ... ON CONFLICT DO UPDATE`` we use for ``put``.
SUPPORTED_DIALECTS: Final = frozenset({"sqlite", "postgresql"})

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SECOND: Final = dt.timedelta(seconds=1)


def define_resources_table(metadata: sa.MetaData) -> sa.Table:
    """Add the ``kbs_resources`` table to ``metadata`` and return it.

    Raises:
        sqlalchemy.exc.InvalidRequestError: ``metadata`` already has a table of that name.
    """
    return sa.Table(
        TABLE_NAME,
        metadata,
        sa.Column("path", sa.Text(), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False, server_default="1"),
    )


def define_resource_versions_table(metadata: sa.MetaData) -> sa.Table:
    """Add the ``kbs_resource_versions`` table to ``metadata`` and return it.

    Raises:
        sqlalchemy.exc.InvalidRequestError: ``metadata`` already has a table of that name.
    """
    return sa.Table(
        VERSIONS_TABLE_NAME,
        metadata,
        sa.Column("path", sa.Text(), primary_key=True),
        sa.Column("version", sa.BigInteger(), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )


#: The storage package's own metadata, holding the two tables below.
metadata: Final = sa.MetaData()
#: The table every :class:`SqlBackend` reads and writes.
resources_table: Final = define_resources_table(metadata)
#: Previous values, kept for rollback.
resource_versions_table: Final = define_resource_versions_table(metadata)


async def create_schema(engine: AsyncEngine) -> None:
    """Create the tables if they do not exist (tests, throwaway databases).

    Production databases get the table from the application's migrations instead.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database refused.
    """
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


class SqlBackend(StorageBackend):
    """Resources as rows of ``kbs_resources`` in SQLite or PostgreSQL.

    The engine belongs to the caller, who disposes of it; :meth:`aclose` leaves it open.
    """

    kind = "sql"

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Callable[[], dt.datetime],
        max_resource_bytes: int = DEFAULT_MAX_RESOURCE_BYTES,
        keep_versions: int = 0,
        read_row: RowReader | None = None,
    ) -> None:
        """Store resources through ``engine``.

        Args:
            engine: An async engine for SQLite or PostgreSQL.
            clock: Returns the current instant as an aware datetime; stamps
                ``created_at``/``updated_at``.
            max_resource_bytes: Size cap for one resource.
            keep_versions: How many previous values to keep per resource (0: none).
            read_row: Runs :meth:`read` (the guest path, once per release) as plain SQL
                on the same database instead of through the engine, which builds and
                compiles a statement and, on SQLite, hops to a driver thread each time.

        Raises:
            ValueError: the engine's dialect is not supported, or ``keep_versions`` < 0.
        """
        super().__init__(max_resource_bytes=max_resource_bytes)
        if engine.dialect.name not in SUPPORTED_DIALECTS:
            raise ValueError(f"unsupported SQL dialect for resources: {engine.dialect.name}")
        if keep_versions < 0:
            raise ValueError("keep_versions must not be negative")
        self._engine = engine
        self._clock = clock
        self._table = resources_table
        self._versions = resource_versions_table
        self.keep_versions = keep_versions
        self._read_row = read_row

    async def _get(self, desc: ResourceDesc) -> bytes:
        """Return the row's data.

        Raises:
            ResourceNotFoundError: no row for ``desc``.
        """
        query = sa.select(self._table.c.data).where(self._table.c.path == str(desc))
        async with self._engine.connect() as conn:
            data = (await conn.execute(query)).scalar_one_or_none()
        if data is None:
            raise ResourceNotFoundError("resource not found")
        return bytes(data)

    async def _read(self, desc: ResourceDesc) -> VersionedValue:
        if self._read_row is not None:
            found = await self._read_row(_READ_SQL, {"path": str(desc)})
            if found is None:
                raise ResourceNotFoundError("resource not found")
            return VersionedValue(bytes(found[0]), str(found[1]))
        query = sa.select(self._table.c.data, self._table.c.version).where(
            self._table.c.path == str(desc)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise ResourceNotFoundError("resource not found")
        return VersionedValue(bytes(row.data), str(row.version))

    async def _put(self, desc: ResourceDesc, data: bytes) -> str:
        """Archive the current value, upsert the new one as ``version + 1``, prune.

        Raises:
            ValueError: the clock returned a naive datetime.
        """
        now = _epoch_seconds(self._clock())
        path = str(desc)
        table, versions = self._table, self._versions
        values = {"path": path, "data": data, "created_at": now, "updated_at": now, "version": 1}
        upsert_set: dict[str, Any] = {
            "data": data,
            "updated_at": now,
            "version": table.c.version + 1,
        }
        statement: Any
        if self._engine.dialect.name == "postgresql":
            statement = postgresql.insert(table).values(values)
        else:
            statement = sqlite.insert(table).values(values)
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.path], set_=upsert_set
        ).returning(table.c.version)
        async with self._engine.begin() as conn:
            # 1. Serialise writers of this path (SQLite: the first write below takes the
            #    database write lock before reading anything).
            await self._lock_path(conn, path)
            # 2. Keep the value being replaced.
            if self.keep_versions > 0:
                await conn.execute(
                    sa.insert(versions).from_select(
                        ["path", "version", "data", "created_at"],
                        sa.select(
                            table.c.path, table.c.version, table.c.data, table.c.updated_at
                        ).where(table.c.path == path),
                    )
                )
            # 3. The new value.
            version = int((await conn.execute(statement)).scalar_one())
            # 4. Drop what falls out of the window (all history when keep_versions is 0).
            await conn.execute(
                sa.delete(versions).where(
                    versions.c.path == path, versions.c.version <= version - 1 - self.keep_versions
                )
            )
        return str(version)

    async def _lock_path(self, conn: Any, path: str) -> None:
        if self._engine.dialect.name == "postgresql":
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_advisory_key(path))))

    async def _delete(self, desc: ResourceDesc) -> None:
        """Delete the row and its kept versions.

        Raises:
            ResourceNotFoundError: no row for ``desc``.
        """
        path = str(desc)
        async with self._engine.begin() as conn:
            await self._lock_path(conn, path)
            deleted = (
                await conn.execute(sa.delete(self._table).where(self._table.c.path == path))
            ).rowcount
            await conn.execute(sa.delete(self._versions).where(self._versions.c.path == path))
        if deleted == 0:
            raise ResourceNotFoundError("resource not found")

    async def _list(self) -> builtins.list[ResourceDesc]:
        """Return the paths of all rows, skipping invalid paths written by other tools."""
        async with self._engine.connect() as conn:
            paths = (await conn.execute(sa.select(self._table.c.path))).scalars().all()
        found: builtins.list[ResourceDesc] = []
        for path in paths:
            try:
                found.append(ResourceDesc.parse(path))
            except InvalidResourcePathError:
                _logger.warning("skipping %s row with an invalid resource path", TABLE_NAME)
        return found

    async def _list_info(self) -> builtins.list[ResourceInfo]:
        table, versions = self._table, self._versions
        kept = (
            sa.select(versions.c.path, sa.func.count().label("n"))
            .group_by(versions.c.path)
            .subquery()
        )
        query = sa.select(
            table.c.path,
            sa.func.length(table.c.data).label("size"),
            table.c.created_at,
            table.c.updated_at,
            table.c.version,
            kept.c.n,
        ).outerjoin(kept, kept.c.path == table.c.path)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found: builtins.list[ResourceInfo] = []
        for row in rows:
            try:
                desc = ResourceDesc.parse(row.path)
            except InvalidResourcePathError:
                _logger.warning("skipping %s row with an invalid resource path", TABLE_NAME)
                continue
            found.append(self._info(desc, row))
        return found

    async def _describe(self, desc: ResourceDesc) -> ResourceInfo:
        table, versions = self._table, self._versions
        kept = (
            sa.select(sa.func.count())
            .select_from(versions)
            .where(versions.c.path == str(desc))
            .scalar_subquery()
        )
        query = sa.select(
            table.c.path,
            sa.func.length(table.c.data).label("size"),
            table.c.created_at,
            table.c.updated_at,
            table.c.version,
            kept.label("n"),
        ).where(table.c.path == str(desc))
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise ResourceNotFoundError("resource not found")
        return self._info(desc, row)

    def _info(self, desc: ResourceDesc, row: Any) -> ResourceInfo:
        return ResourceInfo(
            desc=desc,
            backend=self.kind,
            size=int(row.size),
            created=_from_epoch(row.created_at),
            updated=_from_epoch(row.updated_at),
            version=str(row.version),
            versions=1 + int(row.n or 0),
        )

    def _require_versions(self) -> None:
        if self.keep_versions == 0:
            raise UnsupportedOperationError("sql backend keeps no versions (keep_versions = 0)")

    async def _list_versions(self, desc: ResourceDesc) -> builtins.list[VersionInfo]:
        self._require_versions()
        table, versions = self._table, self._versions
        current = sa.select(
            table.c.version,
            sa.func.length(table.c.data).label("size"),
            table.c.updated_at.label("created_at"),
        ).where(table.c.path == str(desc))
        previous = (
            sa.select(
                versions.c.version,
                sa.func.length(versions.c.data).label("size"),
                versions.c.created_at,
            )
            .where(versions.c.path == str(desc))
            .order_by(versions.c.version.desc())
        )
        async with self._engine.connect() as conn:
            head = (await conn.execute(current)).first()
            rows = (await conn.execute(previous)).all() if head is not None else []
        if head is None:
            raise ResourceNotFoundError("resource not found")
        return [
            VersionInfo(
                version=str(row.version),
                size=int(row.size),
                created=_from_epoch(row.created_at),
                current=row is head,
            )
            for row in (head, *rows)
        ]

    async def _get_version(self, desc: ResourceDesc, version: str) -> bytes:
        self._require_versions()
        number = _version_number(version)
        table, versions = self._table, self._versions
        path = str(desc)
        async with self._engine.connect() as conn:
            data = (
                await conn.execute(
                    sa.select(versions.c.data).where(
                        versions.c.path == path, versions.c.version == number
                    )
                )
            ).scalar_one_or_none()
            if data is None:
                data = (
                    await conn.execute(
                        sa.select(table.c.data).where(
                            table.c.path == path, table.c.version == number
                        )
                    )
                ).scalar_one_or_none()
        if data is None:
            raise ResourceNotFoundError("resource version not found")
        return bytes(data)

    async def _delete_version(self, desc: ResourceDesc, version: str) -> None:
        self._require_versions()
        number = _version_number(version)
        table, versions = self._table, self._versions
        path = str(desc)
        async with self._engine.begin() as conn:
            await self._lock_path(conn, path)
            deleted = (
                await conn.execute(
                    sa.delete(versions).where(versions.c.path == path, versions.c.version == number)
                )
            ).rowcount
            if deleted == 0:
                current = (
                    await conn.execute(sa.select(table.c.version).where(table.c.path == path))
                ).scalar_one_or_none()
                if current is not None and int(current) == number:
                    raise ResourceConflictError("cannot delete the current version")
                raise ResourceNotFoundError("resource version not found")

    async def _check(self) -> None:
        """Probe the connection and the table with a one-row read."""
        async with self._engine.connect() as conn:
            await conn.execute(sa.select(self._table.c.path).limit(1))


def _advisory_key(path: str) -> int:
    """A signed 64-bit PostgreSQL advisory lock key for one resource path."""
    digest = hashlib.sha256(b"kbs-resource:" + path.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _version_number(version: str) -> int:
    if not version.isdigit():
        raise ResourceNotFoundError("resource version not found")
    return int(version)


def _from_epoch(seconds: int | None) -> dt.datetime | None:
    return None if seconds is None else _EPOCH + int(seconds) * _SECOND


def _epoch_seconds(at: dt.datetime) -> int:
    """Whole seconds since the Unix epoch, rounded down.

    Raises:
        ValueError: ``at`` is naive (its epoch offset would depend on the host's zone).
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("clock returned a naive datetime")
    return (at - _EPOCH) // _SECOND
