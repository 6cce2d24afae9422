# SPDX-License-Identifier: Apache-2.0
"""Secrets in a SQL table, shared by every KBS replica that uses the same database.

One row per resource in ``kbs_resources``::

    path        TEXT PRIMARY KEY   -- "<repository>/<type>/<tag>"
    data        BLOB / BYTEA       -- the secret, as given
    created_at  BIGINT             -- epoch seconds, from the injected clock
    updated_at  BIGINT             -- epoch seconds, from the injected clock

The table is defined on :data:`metadata` (or on the application's own ``MetaData`` through
:func:`define_resources_table`) so the application's alembic migration creates it;
:func:`create_schema` is for tests and throwaway databases. SQLite (``sqlite+aiosqlite``)
and PostgreSQL (``postgresql+psycopg``) are supported; ``put`` is one atomic upsert.
(Trustee's ``Postgres`` key-value store keeps ``key``/``value`` columns in a table per
namespace; this table is ours and is not shared with a reference KBS.)
"""

from __future__ import annotations

import builtins
import datetime as dt
import logging
from collections.abc import Callable
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from storage_backends.base import DEFAULT_MAX_RESOURCE_BYTES, ResourceDesc, StorageBackend
from storage_backends.errors import InvalidResourcePathError, ResourceNotFoundError

_logger = logging.getLogger(__name__)

__all__ = [
    "TABLE_NAME",
    "SqlBackend",
    "create_schema",
    "define_resources_table",
    "metadata",
    "resources_table",
]

#: Name of the resources table.
TABLE_NAME: Final = "kbs_resources"

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
    )


#: The storage package's own metadata, holding only :data:`resources_table`.
metadata: Final = sa.MetaData()
#: The table every :class:`SqlBackend` reads and writes.
resources_table: Final = define_resources_table(metadata)


async def create_schema(engine: AsyncEngine) -> None:
    """Create :data:`resources_table` if it does not exist (tests, throwaway databases).

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
    ) -> None:
        """Store resources through ``engine``.

        Args:
            engine: An async engine for SQLite or PostgreSQL.
            clock: Returns the current instant as an aware datetime; stamps
                ``created_at``/``updated_at``.
            max_resource_bytes: Size cap for one resource.

        Raises:
            ValueError: the engine's dialect is not supported.
        """
        super().__init__(max_resource_bytes=max_resource_bytes)
        if engine.dialect.name not in SUPPORTED_DIALECTS:
            raise ValueError(f"unsupported SQL dialect for resources: {engine.dialect.name}")
        self._engine = engine
        self._clock = clock
        self._table = resources_table

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

    async def _put(self, desc: ResourceDesc, data: bytes) -> None:
        """Insert or replace the row in one statement; ``created_at`` survives a replace.

        Raises:
            ValueError: the clock returned a naive datetime.
        """
        now = _epoch_seconds(self._clock())
        values = {"path": str(desc), "data": data, "created_at": now, "updated_at": now}
        statement: sa.Insert
        if self._engine.dialect.name == "postgresql":
            pg = postgresql.insert(self._table).values(values)
            statement = pg.on_conflict_do_update(
                index_elements=[self._table.c.path],
                set_={"data": pg.excluded.data, "updated_at": pg.excluded.updated_at},
            )
        else:
            lite = sqlite.insert(self._table).values(values)
            statement = lite.on_conflict_do_update(
                index_elements=[self._table.c.path],
                set_={"data": lite.excluded.data, "updated_at": lite.excluded.updated_at},
            )
        async with self._engine.begin() as conn:
            await conn.execute(statement)

    async def _delete(self, desc: ResourceDesc) -> None:
        """Delete the row.

        Raises:
            ResourceNotFoundError: no row for ``desc``.
        """
        statement = sa.delete(self._table).where(self._table.c.path == str(desc))
        async with self._engine.begin() as conn:
            deleted = (await conn.execute(statement)).rowcount
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

    async def _check(self) -> None:
        """Probe the connection and the table with a one-row read."""
        async with self._engine.connect() as conn:
            await conn.execute(sa.select(self._table.c.path).limit(1))


def _epoch_seconds(at: dt.datetime) -> int:
    """Whole seconds since the Unix epoch, rounded down.

    Raises:
        ValueError: ``at`` is naive (its epoch offset would depend on the host's zone).
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("clock returned a naive datetime")
    return (at - _EPOCH) // _SECOND
