# SPDX-License-Identifier: Apache-2.0
"""The database: tables, engines, and schema migrations.

SQLAlchemy Core (no ORM) over SQLite (default, ``sqlite+aiosqlite``) or PostgreSQL
(``postgresql+psycopg``). Times are stored as integer milliseconds since the epoch so
both dialects compare them the same way. Migrations are alembic scripts under
``kbs/migrations``; :func:`migrate` runs them under a lock, so any number of processes
may start at once against one database.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

_logger = logging.getLogger(__name__)

__all__ = [
    "audit",
    "audit_head",
    "collateral",
    "from_millis",
    "make_async_engine",
    "metadata",
    "migrate",
    "policies",
    "reference_values",
    "release_policies",
    "sessions",
    "signing_keys",
    "to_millis",
]

metadata: Final = sa.MetaData()

#: RCAR sessions (the reference's ``kbs_protocol_session`` namespace).
sessions: Final = sa.Table(
    "kbs_sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # "authed" | "attested"
    sa.Column("protocol_version", sa.String(16), nullable=False),
    sa.Column("tee", sa.String(32), nullable=False),
    sa.Column("nonce", sa.String(512), nullable=False),
    sa.Column("request_extra_params", sa.Text, nullable=False),
    sa.Column("token", sa.Text, nullable=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    # Counting live unattested sessions (migration 0003).
    sa.Index("ix_kbs_sessions_state_expires_at", "state", "expires_at"),
)

#: Rego policies by namespace ("attestation" for appraisal policies, "resource" for release).
policies: Final = sa.Table(
    "kbs_policies",
    metadata,
    sa.Column("namespace", sa.String(32), primary_key=True),
    sa.Column("policy_id", sa.String(255), primary_key=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("sha384", sa.String(96), nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

#: Reference values registered through RVPS messages.
reference_values: Final = sa.Table(
    "kbs_reference_values",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("version", sa.String(16), nullable=False),
    sa.Column("value", sa.Text, nullable=False),  # JSON
    sa.Column("expires_at", sa.BigInteger, nullable=True),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

#: Keys generated once and shared by every replica (the EAR token signing key).
signing_keys: Final = sa.Table(
    "kbs_signing_keys",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("pem", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

#: DCAP collateral shared by replicas (filled by the TDX verifier's cache).
collateral: Final = sa.Table(
    "kbs_collateral",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("fetched_at", sa.BigInteger, nullable=False),
    sa.Column("next_update", sa.BigInteger, nullable=False),
)


#: Per-resource release policies, by resource path prefix (``cai/*``), migration 0002.
release_policies: Final = sa.Table(
    "kbs_release_policies",
    metadata,
    sa.Column("prefix", sa.String(800), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # "rego" | "allow_list"
    sa.Column("text", sa.Text, nullable=False),  # the Rego evaluated (compiled for allow lists)
    sa.Column("source", sa.Text, nullable=True),  # the allow list (JSON), if any
    sa.Column("sha384", sa.String(96), nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("updated_by", sa.String(255), nullable=False),
)

#: The append-only audit trail, hash-chained (kbs/audit.py), migration 0002.
audit: Final = sa.Table(
    "kbs_audit",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", sa.BigInteger, nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False, index=True),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(255), nullable=True),
    sa.Column("client", sa.String(64), nullable=True),
    sa.Column("request_id", sa.String(128), nullable=True, index=True),
    sa.Column("resource", sa.String(800), nullable=True, index=True),
    sa.Column("detail", sa.Text, nullable=False),  # JSON, never secret values
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

#: The audit chain's head: one row (id 1) with the last sequence number and hash.
audit_head: Final = sa.Table(
    "kbs_audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)


def to_millis(at: dt.datetime) -> int:
    """Milliseconds since the epoch of an aware datetime."""
    return int(at.timestamp() * 1000)


def from_millis(ms: int) -> dt.datetime:
    """The aware UTC datetime of ``ms`` milliseconds since the epoch."""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


# --------------------------------------------------------------------------- engines

_SQLITE_DRIVERS: Final = ("sqlite", "sqlite+pysqlite", "sqlite+aiosqlite")
_PG_DRIVERS: Final = (
    "postgres",
    "postgresql",
    "postgresql+psycopg",
    "postgresql+psycopg2",
    "postgresql+asyncpg",
)


def _normalise(url: str, *, async_: bool) -> URL:
    parsed = make_url(url)
    if parsed.drivername in _SQLITE_DRIVERS:
        return parsed.set(drivername="sqlite+aiosqlite" if async_ else "sqlite")
    if parsed.drivername in _PG_DRIVERS:
        return parsed.set(drivername="postgresql+psycopg")
    raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}")


def is_sqlite(url: str) -> bool:
    """Whether ``url`` names a SQLite database."""
    return make_url(url).drivername in _SQLITE_DRIVERS


def _sqlite_path(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:":
        return None
    return Path(database)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers and one writer in several processes work at once; the busy
    # timeout makes a writer wait for another process's write instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


#: Seconds a synchronous connection (migrations, admin commands) may take to open.
SYNC_CONNECT_TIMEOUT_S: Final = 10.0
#: libpq counts ``connect_timeout`` in whole seconds and treats less than 2 as 2.
_PG_MIN_CONNECT_TIMEOUT_S: Final = 2


def _pg_connect_args(
    connect_timeout_s: float, statement_timeout_s: float | None = None
) -> dict[str, Any]:
    """Libpq options bounding a PostgreSQL connection attempt and each statement.

    ``connect_timeout`` covers TCP, TLS and the start-up exchange (psycopg enforces it
    client-side, so a server that accepts and never answers is given up on too);
    ``statement_timeout`` makes the server cancel a statement (including lock waits).
    """
    args: dict[str, Any] = {
        "connect_timeout": max(_PG_MIN_CONNECT_TIMEOUT_S, math.ceil(connect_timeout_s))
    }
    if statement_timeout_s is not None:
        args["options"] = f"-c statement_timeout={math.ceil(statement_timeout_s * 1000)}"
    return args


def make_async_engine(
    url: str,
    *,
    pool_size: int = 10,
    timeout_s: float = 5.0,
    statement_timeout_s: float | None = None,
) -> AsyncEngine:
    """Create the async engine the application uses.

    ``timeout_s`` bounds opening a connection and waiting for a pooled one;
    ``statement_timeout_s`` (PostgreSQL) bounds each statement (``None``: unbounded).

    Raises:
        ValueError: the URL scheme is not SQLite or PostgreSQL.
    """
    target = _normalise(url, async_=True)
    if target.drivername.startswith("sqlite"):
        path = _sqlite_path(target)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = create_async_engine(target, connect_args={"timeout": timeout_s})
        sa.event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
        return engine
    return create_async_engine(
        target,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=timeout_s,
        pool_pre_ping=True,
        connect_args=_pg_connect_args(timeout_s, statement_timeout_s),
    )


def make_sync_engine(url: str, *, connect_timeout_s: float = SYNC_CONNECT_TIMEOUT_S) -> Engine:
    """Create a synchronous engine (migrations, admin commands).

    Opening a PostgreSQL connection gives up after ``connect_timeout_s``; statements are
    not bounded (a migration may wait for another process's migration lock).
    """
    target = _normalise(url, async_=False)
    if target.drivername.startswith("sqlite"):
        path = _sqlite_path(target)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = sa.create_engine(target, poolclass=sa.pool.NullPool)
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return sa.create_engine(
        target, poolclass=sa.pool.NullPool, connect_args=_pg_connect_args(connect_timeout_s)
    )


# --------------------------------------------------------------------------- migrations

#: Arbitrary constant naming our PostgreSQL advisory lock ("KBSMIGR" in ASCII).
_PG_MIGRATION_LOCK: Final = 0x4B42534D49475200 >> 8


def _alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def migrate(
    url: str, revision: str = "head", *, connect_timeout_s: float = SYNC_CONNECT_TIMEOUT_S
) -> None:
    """Bring the schema at ``url`` to ``revision``, serialised across processes.

    PostgreSQL: a session-level advisory lock around the upgrade. SQLite: an exclusive
    lock on a ``.migrate.lock`` file beside the database. A process that waits for the
    lock finds the schema already current and does nothing. Connecting gives up after
    ``connect_timeout_s``.
    """
    engine = make_sync_engine(url, connect_timeout_s=connect_timeout_s)
    try:
        target = _normalise(url, async_=False)
        if target.drivername.startswith("sqlite"):
            db_path = _sqlite_path(target)
            lock = (
                _file_lock(db_path.with_name(db_path.name + ".migrate.lock"))
                if db_path is not None
                else contextlib.nullcontext()
            )
            with lock, engine.begin() as conn:
                command.upgrade(_alembic_config(conn), revision)
        else:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
                try:
                    with conn.begin():
                        command.upgrade(_alembic_config(conn), revision)
                finally:
                    conn.execute(
                        sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK}
                    )
                    conn.commit()
    finally:
        engine.dispose()
