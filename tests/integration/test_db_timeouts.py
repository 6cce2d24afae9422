# SPDX-License-Identifier: Apache-2.0
"""Every database call is bounded: a server that accepts and never answers is given up on."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from kbs import db
from kbs.errors import DatabaseUnavailableError
from kbs.sessions import SessionStore
from support.processes import run_cli

AT = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
#: Far above the configured timeouts: only a hang reaches it.
HANG_S = 60.0


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback listener that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"postgresql://kbs@127.0.0.1:{server.getsockname()[1]}/kbs"
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


def test_migrate_gives_up_on_a_silent_server(silent_server: str) -> None:
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            db.migrate(silent_server, connect_timeout_s=2)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_S)
    assert not thread.is_alive(), "migrate hung on a server that never answers"
    assert len(outcome) == 1
    assert isinstance(outcome[0], OperationalError)
    assert "timeout" in str(outcome[0])


async def test_sessions_give_up_on_a_silent_server(silent_server: str) -> None:
    engine = db.make_async_engine(silent_server, timeout_s=2, statement_timeout_s=2)
    store = SessionStore(engine, max_unattested=10)
    try:
        async with asyncio.timeout(HANG_S):
            with pytest.raises(DatabaseUnavailableError, match="sessions could not be counted"):
                await store.create(
                    session_id="a" * 32,
                    protocol_version="0.4.0",
                    tee="sample",
                    nonce="n",
                    request_extra_params={},
                    expires_at=AT + dt.timedelta(minutes=5),
                    at=AT,
                )
            with pytest.raises(DatabaseUnavailableError, match="session could not be read"):
                await store.get("a" * 32, at=AT)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_postgres_statements_are_cancelled_after_the_statement_timeout(
    pg_database_url: str,
) -> None:
    engine = db.make_async_engine(pg_database_url, timeout_s=2, statement_timeout_s=0.5)
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("SHOW statement_timeout")) == "500ms"
            with pytest.raises(OperationalError, match="statement timeout"):
                await conn.execute(sa.text("SELECT pg_sleep(10)"))
    finally:
        await engine.dispose()


def test_kbs_migrate_reports_a_silent_server(silent_server: str, tmp_path) -> None:
    config = tmp_path / "kbs.toml"
    config.write_text(f'[database]\nurl = "{silent_server}"\ntimeout_s = 2\n')
    result = run_cli("kbs", "migrate", "--config", str(config))
    assert result.returncode == 1
    assert "kbs migrate: database unreachable: connection timeout expired" in result.stderr
    assert "Traceback" not in result.stderr
