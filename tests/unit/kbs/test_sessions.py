# SPDX-License-Identifier: Apache-2.0
"""The SQL session store: lifecycle, expiry, purge, concurrent attestation."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from kbs import db
from kbs.errors import RateLimitedError
from kbs.sessions import UNATTESTED_RECOUNT_INTERVAL_S, SessionStore

AT = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
async def store(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'kbs.db'}"
    db.migrate(url)
    engine = db.make_async_engine(url)
    yield SessionStore(engine)
    await engine.dispose()


async def _create(store: SessionStore, sid: str, minutes: int = 5, at: dt.datetime = AT):
    return await store.create(
        session_id=sid,
        protocol_version="0.4.0",
        tee="sample",
        nonce="n",
        request_extra_params={"a": 1},
        expires_at=at + dt.timedelta(minutes=minutes),
        at=at,
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


@pytest.fixture
async def capped_engine(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'capped.db'}"
    db.migrate(url)
    engine = db.make_async_engine(url)
    yield engine
    await engine.dispose()


async def test_cap_on_unattested_sessions(capped_engine) -> None:
    store = SessionStore(capped_engine, max_unattested=2)
    first = await _create(store, "a" * 32)
    await _create(store, "b" * 32)
    with pytest.raises(RateLimitedError, match="too many sessions awaiting attestation"):
        await _create(store, "c" * 32)
    # Attesting one frees a place at once in this process (no recount needed).
    await store.mark_attested(first, "token")
    await _create(store, "c" * 32)
    with pytest.raises(RateLimitedError):
        await _create(store, "d" * 32)
    assert await store.count_unattested(at=AT) == 2


async def test_cap_is_shared_through_the_database(capped_engine) -> None:
    # Two stores on one database stand for two replicas.
    one = SessionStore(capped_engine, max_unattested=3)
    two = SessionStore(capped_engine, max_unattested=3)
    for sid in ("a", "b", "c"):
        await _create(one, sid * 32)
    with pytest.raises(RateLimitedError):
        await _create(two, "d" * 32)


async def test_expired_sessions_are_not_counted(capped_engine) -> None:
    store = SessionStore(capped_engine, max_unattested=2)
    await _create(store, "a" * 32, minutes=1)
    await _create(store, "b" * 32, minutes=1)
    with pytest.raises(RateLimitedError):
        await _create(store, "c" * 32)
    # Within the recount interval the process keeps its count...
    soon = AT + dt.timedelta(seconds=UNATTESTED_RECOUNT_INTERVAL_S / 2)
    with pytest.raises(RateLimitedError):
        await _create(store, "c" * 32, at=soon)
    # ... after the sessions expired (and the interval passed) they are not counted.
    later = AT + dt.timedelta(minutes=1, seconds=1)
    await _create(store, "c" * 32, at=later)
    assert await store.count_unattested(at=later) == 1
    # A clock that steps backwards forces a recount (which sees all three live).
    with pytest.raises(RateLimitedError):
        await _create(store, "d" * 32, at=AT)


async def test_no_cap_by_default(capped_engine) -> None:
    store = SessionStore(capped_engine)
    for sid in "abcde":
        await _create(store, sid * 32)
    assert await store.count_unattested(at=AT) == 5


async def test_cap_holds_for_concurrent_requests(capped_engine) -> None:
    store = SessionStore(capped_engine, max_unattested=3)
    results = await asyncio.gather(
        *(_create(store, f"{n:032x}") for n in range(8)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 3
    assert all(isinstance(r, RateLimitedError) for r in results if isinstance(r, BaseException))
    assert await store.count_unattested(at=AT) == 3
