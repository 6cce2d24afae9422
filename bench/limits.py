# SPDX-License-Identifier: Apache-2.0
"""What the limits cost: the unattested-session count, and the client address behind a proxy.

Usage::

    .venv/bin/python bench/limits.py [--sessions 1000 100000] [--postgres URL]

1. ``SessionStore.count_unattested`` (the query ``/kbs/v0/auth`` runs at most once a
   second per process for ``max_unattested_sessions``) with N live authed sessions plus
   as many attested and expired ones, on SQLite (and PostgreSQL with ``--postgres``, a
   database that is emptied first), median of 21 runs: uncapped, and stopped at
   ``--cap`` as the server does; and without the ``(state, expires_at)`` index;
2. ``client_address`` per request: the peer only, and through a trusted proxy with a
   one-hop and a three-hop ``X-Forwarded-For``;
3. with ``--http-seconds S``: requests/s of a trivial ASGI app under uvicorn's own
   httptools protocol and under ``HeaderLimitedHttpToolsProtocol`` (one server process
   each, 8 keep-alive connections sending small GETs with a 4 KiB ``Authorization``
   header), alternated twice, so the cost of the header limit and timer shows.

Prints one figure per line.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from starlette.requests import Request

from kbs import db
from kbs.ratelimit import NO_PROXIES, TrustedProxies, client_address
from kbs.sessions import ATTESTED, AUTHED, SessionStore

AT = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
RUNS = 21
BATCH = 10_000


def _rows(count: int, state: str, expires_ms: int, tag: str) -> list[dict[str, object]]:
    return [
        {
            "id": f"{tag}{i:030d}",
            "state": state,
            "protocol_version": "0.4.0",
            "tee": "sample",
            "nonce": "n" * 44,
            "request_extra_params": '""',
            "token": None,
            "expires_at": expires_ms,
        }
        for i in range(count)
    ]


async def _fill(url: str, sessions: int) -> None:
    engine = db.make_async_engine(url)
    live = db.to_millis(AT + dt.timedelta(minutes=5))
    expired = db.to_millis(AT - dt.timedelta(minutes=1))
    async with engine.begin() as conn:
        await conn.execute(db.sessions.delete())
    for state, expires, tag in ((AUTHED, live, "a"), (ATTESTED, live, "t"), (AUTHED, expired, "x")):
        rows = _rows(sessions, state, expires, tag)
        for start in range(0, len(rows), BATCH):
            async with engine.begin() as conn:
                await conn.execute(db.sessions.insert(), rows[start : start + BATCH])
    await engine.dispose()
    # As autovacuum leaves a table: statistics and the visibility map up to date.
    sync = db.make_sync_engine(url)
    with sync.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE kbs_sessions" if "postgresql" in url else "ANALYZE"))
    sync.dispose()


async def _time_count(url: str, sessions: int, up_to: int | None) -> float:
    engine = db.make_async_engine(url)
    store = SessionStore(engine)
    assert await store.count_unattested(at=AT, up_to=up_to) == min(sessions, up_to or sessions)
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        await store.count_unattested(at=AT, up_to=up_to)
        times.append(time.perf_counter() - start)
    await engine.dispose()
    return statistics.median(times) * 1000


async def _drop_index(url: str) -> None:
    engine = db.make_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(sa.text("DROP INDEX ix_kbs_sessions_state_expires_at"))
    await engine.dispose()


def _count_section(name: str, url: str, sizes: list[int], cap: int) -> None:
    db.migrate(url)
    for sessions in sizes:
        asyncio.run(_fill(url, sessions))
        ms = asyncio.run(_time_count(url, sessions, None))
        print(f"{name}: count_unattested with {sessions} live authed sessions: {ms:.2f} ms")
        capped = asyncio.run(_time_count(url, sessions, cap))
        print(f"{name}: the same, counting stopped at the cap {cap}: {capped:.2f} ms")
    asyncio.run(_drop_index(url))
    ms = asyncio.run(_time_count(url, sizes[-1], None))
    print(f"{name}: {sizes[-1]} sessions without the (state, expires_at) index: {ms:.2f} ms")
    engine = db.make_sync_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE INDEX ix_kbs_sessions_state_expires_at ON kbs_sessions (state, expires_at)"
            )
        )
        conn.execute(db.sessions.delete())
    engine.dispose()


def _per_call_us(request: Request, proxies: TrustedProxies, calls: int = 200_000) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        client_address(request, proxies)
    return (time.perf_counter() - start) / calls * 1e6


def _address_section() -> None:
    alb = TrustedProxies(["10.0.0.0/8", "192.168.0.0/16"])

    def request(*forwarded: str) -> Request:
        headers = [(b"x-forwarded-for", v.encode()) for v in forwarded]
        return Request({"type": "http", "headers": headers, "client": ("10.0.0.2", 4711)})

    print(f"client_address, no trusted proxies: {_per_call_us(request(), NO_PROXIES):.2f} us")
    one = _per_call_us(request("203.0.113.9"), alb)
    print(f"client_address, trusted proxy, 1-hop X-Forwarded-For: {one:.2f} us")
    three = _per_call_us(request("198.51.100.1, 203.0.113.9, 192.168.4.4"), alb)
    print(f"client_address, trusted proxy, 3-hop X-Forwarded-For: {three:.2f} us")


_SERVER = """
import sys, uvicorn
from kbs.httpserver import HeaderLimitedHttpToolsProtocol, ServerConfig

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})

kind, port = sys.argv[1], int(sys.argv[2])
http = HeaderLimitedHttpToolsProtocol if kind == "limited" else "httptools"
config = ServerConfig(app, host="127.0.0.1", port=port, http=http, log_level="error",
                      access_log=False, lifespan="off", h11_max_incomplete_event_size=131072)
uvicorn.Server(config).run()
"""


async def _load(port: int, seconds: float, connections: int = 8) -> int:
    request = b"GET / HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer " + b"A" * 4096 + b"\r\n\r\n"
    done = 0
    deadline = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            writer.write(request)
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            done += 1
        writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return done


def _http_section(seconds: float) -> None:
    for round_ in (1, 2):
        for kind in ("httptools", "limited"):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            proc = subprocess.Popen([sys.executable, "-c", _SERVER, kind, str(port)])
            try:
                for _ in range(100):
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        time.sleep(0.05)
                done = asyncio.run(_load(port, seconds))
            finally:
                proc.terminate()
                proc.wait()
            print(f"http round {round_}, {kind} protocol: {done / seconds:.0f} requests/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--postgres", help="a PostgreSQL URL whose database may be emptied")
    parser.add_argument("--cap", type=int, default=10_000, help="max_unattested_sessions")
    parser.add_argument("--http-seconds", type=float, default=0.0, help="0: skip section 3")
    parser.add_argument("--skip-sessions", action="store_true", help="skip section 1")
    args = parser.parse_args()
    if not args.skip_sessions:
        with tempfile.TemporaryDirectory() as tmp:
            _count_section("sqlite", f"sqlite:///{Path(tmp) / 'kbs.db'}", args.sessions, args.cap)
        if args.postgres:
            _count_section("postgresql", args.postgres, args.sessions, args.cap)
    _address_section()
    if args.http_seconds > 0:
        _http_section(args.http_seconds)


if __name__ == "__main__":
    main()
