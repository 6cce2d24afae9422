# SPDX-License-Identifier: Apache-2.0
"""auth + attest latency with 10^2, 10^4, 10^6 stored sessions and 10^5 stored resources.

For SQLite and PostgreSQL: starts ``kbs serve`` (1 worker by default, resources in the
database) on a fresh database (SQLite: a file in a temporary directory; PostgreSQL: a
database ``kbs_bench_<pid>`` created on ``--postgres-url``'s server and dropped at the
end, never the tables of the database named in the URL), bulk-inserts ``--resources``
rows into ``kbs_resources`` and, size by size, grows ``kbs_sessions`` to each of
``--sizes`` with bulk SQL inserts matching the real schema (attested sessions, as a
fleet leaves behind: random 16-byte ids, live for a day, a placeholder token of
``--token-bytes``). At each size it runs ``--flows`` sample-TEE auth -> attest flows
(``--concurrency`` at a time) and prints p50/p99 latency and the server's CPU ms per
flow, then the growth ratio of the largest size over the smallest (issue 8 target:
10^2 -> 10^6 sessions <= 1.2x).

    .venv/bin/python bench/scale.py [--db sqlite postgres] [--sizes 100 10000 1000000]
        [--resources 100000] [--flows 400] [--concurrency 4]
        [--postgres-url postgresql://postgres@127.0.0.1:5432/test]
        [--kbs /path/to/other/venv/bin/kbs] [--quick]

Output: ``<db>.<figure>: <value>`` lines. Exit status 1 if any flow failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _common as c
import psycopg

from kbs.client.tee_key import TeeKeyPair

#: Rows per bulk-insert batch.
BATCH = 50_000
#: Stored sessions live this long (ms), so the periodic sweep keeps them.
SESSION_LIFETIME_MS = 24 * 3600 * 1000


def _session_rows(count: int, token: str) -> Iterator[tuple[Any, ...]]:
    expires = int(time.time() * 1000) + SESSION_LIFETIME_MS  # noqa: TID251
    for _ in range(count):
        yield (
            os.urandom(16).hex(),
            "attested",
            "0.4.0",
            "sample",
            base64.b64encode(os.urandom(32)).decode(),
            '""',
            token,
            expires,
        )


def _resource_rows(count: int) -> Iterator[tuple[Any, ...]]:
    now = int(time.time())  # noqa: TID251
    for i in range(count):
        yield (f"bench/scale/r{i:07d}", os.urandom(32), now, now, 1)


class Database:
    """One benchmark database: its URL for the server and bulk inserts into it."""

    name: str
    url: str

    def insert_sessions(self, count: int, token: str) -> None:
        raise NotImplementedError

    def insert_resources(self, count: int) -> None:
        raise NotImplementedError

    def count(self, table: str) -> int:
        raise NotImplementedError


class SqliteDatabase(Database):
    name = "sqlite"

    def __init__(self, work: Path) -> None:
        self.path = work / "kbs.db"
        self.url = f"sqlite:///{self.path}"

    def _insert(self, sql: str, rows: Iterator[tuple[Any, ...]]) -> None:
        with contextlib.closing(sqlite3.connect(self.path, timeout=60)) as conn, conn:
            conn.executemany(sql, rows)
        with contextlib.closing(sqlite3.connect(self.path, timeout=60)) as conn:
            conn.execute("ANALYZE")
            # Fold the bulk insert's WAL into the database now, not in the server's first
            # commit during the measurement.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def insert_sessions(self, count: int, token: str) -> None:
        self._insert(
            "INSERT INTO kbs_sessions (id, state, protocol_version, tee, nonce, "
            "request_extra_params, token, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            _session_rows(count, token),
        )

    def insert_resources(self, count: int) -> None:
        self._insert(
            "INSERT INTO kbs_resources (path, data, created_at, updated_at, version) "
            "VALUES (?, ?, ?, ?, ?)",
            _resource_rows(count),
        )

    def count(self, table: str) -> int:
        with contextlib.closing(sqlite3.connect(self.path, timeout=60)) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


class PostgresDatabase(Database):
    name = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url

    def _copy(self, sql: str, rows: Iterator[tuple[Any, ...]], table: str) -> None:
        with psycopg.connect(self.url) as conn:
            with conn.cursor() as cur, cur.copy(sql) as copy:
                for row in rows:
                    copy.write_row(row)
            conn.commit()
        # Set hint bits and the visibility map now, not in the server's first reads.
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"VACUUM ANALYZE {table}")

    def insert_sessions(self, count: int, token: str) -> None:
        self._copy(
            "COPY kbs_sessions (id, state, protocol_version, tee, nonce, "
            "request_extra_params, token, expires_at) FROM STDIN",
            _session_rows(count, token),
            "kbs_sessions",
        )

    def insert_resources(self, count: int) -> None:
        self._copy(
            "COPY kbs_resources (path, data, created_at, updated_at, version) FROM STDIN",
            _resource_rows(count),
            "kbs_resources",
        )

    def count(self, table: str) -> int:
        with psycopg.connect(self.url) as conn:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            return int(row[0]) if row else 0


async def _auth_attest(session: Any, url: str) -> None:
    await c.auth_attest(session, url, c.SampleGuest(), TeeKeyPair.generate("ec-p256"))


def run_db(database: Database, work: Path, args: argparse.Namespace) -> int:
    """Measure every size on one database; returns the number of failed flows."""
    admin = c.Admin.create(work)
    config = c.write_config(work, admin, database_url=database.url)
    errors = 0
    p50s: dict[int, float] = {}
    cpu_ms: dict[int, float] = {}
    with c.kbs_serve(args.kbs, config, workers=args.workers, work=work) as (url, pid):
        asyncio.run(c.provision(url, admin, c.SAMPLE_REFERENCE_VALUES))
        started = time.perf_counter()
        database.insert_resources(args.resources)
        c.figure(f"{database.name}.resources", database.count("kbs_resources"), "d")
        c.figure(f"{database.name}.resources_insert_s", time.perf_counter() - started)
        token = "t" * args.token_bytes

        async def flow(session: Any) -> None:
            await _auth_attest(session, url)

        for size in sorted(args.sizes):
            present = database.count("kbs_sessions")
            started = time.perf_counter()
            if size > present:
                database.insert_sessions(size - present, token)
            # Write back the bulk insert's dirty pages (and an earlier run's) before
            # measuring: fsyncs in the measured flows would otherwise wait behind them.
            os.sync()
            prefix = f"{database.name}.sessions_{size}"
            c.figure(f"{prefix}.stored", database.count("kbs_sessions"), "d")
            c.figure(f"{prefix}.insert_s", time.perf_counter() - started)
            # Warm up at the measured concurrency, so connection pools have grown already;
            # the first size gets three times as many (the server has just started).
            warmup = args.warmup * (3 if not p50s else 1)
            asyncio.run(
                c.run_load(flow, seconds=120, concurrency=args.concurrency, max_flows=warmup)
            )
            cpu_before = c.cpu_seconds(pid)
            result = asyncio.run(
                c.run_load(flow, seconds=600, concurrency=args.concurrency, max_flows=args.flows)
            )
            cpu = c.cpu_seconds(pid) - cpu_before
            p50, p99 = c.percentiles(result.latencies)
            p50s[size] = p50
            c.figure(f"{prefix}.flows", result.flows, "d")
            c.figure(f"{prefix}.errors", result.errors, "d")
            c.figure(f"{prefix}.p50_ms", p50)
            c.figure(f"{prefix}.p99_ms", p99)
            cpu_ms[size] = cpu * 1000 / max(result.flows, 1)
            c.figure(f"{prefix}.server_cpu_ms_per_flow", cpu_ms[size])
            errors += result.errors
            for error in result.first_errors:
                print(f"# {prefix} error: {error}", file=sys.stderr)
    smallest, largest = min(p50s), max(p50s)
    growth = f"growth_{largest}_vs_{smallest}"
    c.figure(f"{database.name}.p50_{growth}", p50s[largest] / p50s[smallest])
    c.figure(f"{database.name}.server_cpu_{growth}", cpu_ms[largest] / cpu_ms[smallest])
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("\n", 2)[2],
    )
    parser.add_argument(
        "--db", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"]
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[100, 10_000, 1_000_000], help="stored sessions"
    )
    parser.add_argument("--resources", type=int, default=100_000, help="stored resources")
    parser.add_argument("--flows", type=int, default=400, help="measured flows per size")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up flows per size")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent guests")
    parser.add_argument("--workers", type=int, default=1, help="kbs serve --workers")
    parser.add_argument(
        "--token-bytes", type=int, default=256, help="length of each stored session's token"
    )
    c.add_postgres_url_arg(parser)
    c.add_server_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.resources, args.flows, args.warmup = [100, 1000], 1000, 20, 5
    if min(args.sizes) < 1 or args.resources < 0:
        parser.error("--sizes must be >= 1 and --resources >= 0")
    c.figure("host_cpus", os.cpu_count() or 0, "d")
    errors = 0
    for name in args.db:
        with (
            c.temp_dir(f"kbs-bench-scale-{name}-") as tmp,
            c.bench_database(name, Path(tmp), args.postgres_url) as url,
        ):
            database = SqliteDatabase(Path(tmp)) if name == "sqlite" else PostgresDatabase(url)
            errors += run_db(database, Path(tmp), args)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
