# SPDX-License-Identifier: Apache-2.0
"""The SQL session store: lifecycle, expiry, purge, concurrent attestation."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from kbs import db
from kbs.sessions import SessionStore

AT = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
async def store(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'kbs.db'}"
    db.migrate(url)
    engine = db.make_async_engine(url)
    yield SessionStore(engine)
    await engine.dispose()


async def _create(store: SessionStore, sid: str, minutes: int = 5):
    return await store.create(
        session_id=sid,
        protocol_version="0.4.0",
        tee="sample",
        nonce="n",
        request_extra_params={"a": 1},
        expires_at=AT + dt.timedelta(minutes=minutes),
    )


async def test_lifecycle_and_lazy_expiry(store: SessionStore) -> None:
    session = await _create(store, "a" * 32)
    got = await store.get("a" * 32, at=AT)
    assert got is not None
    assert got.request_extra_params == {"a": 1}
    assert not got.attested
    attested = await store.mark_attested(got, "token-1")
    assert attested.attested
    assert attested.token == "token-1"
    # A second attest (another process) keeps the first token.
    again = await store.mark_attested(session, "token-2")
    assert again.token == "token-1"
    assert await store.get("a" * 32, at=AT + dt.timedelta(minutes=5)) is None
    assert await store.get("a" * 32, at=AT) is None  # deleted when found expired


async def test_purge_expired(store: SessionStore) -> None:
    await _create(store, "a" * 32, minutes=1)
    await _create(store, "b" * 32, minutes=10)
    assert await store.count_live(at=AT) == 2
    assert await store.purge_expired(at=AT + dt.timedelta(minutes=2)) == 1
    assert await store.count_live(at=AT) == 1
    assert await store.get("b" * 32, at=AT) is not None
