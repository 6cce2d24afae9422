# SPDX-License-Identifier: Apache-2.0
"""SqlCollateralStore on SQLite and PostgreSQL: round trip, newest wins, junk is ignored."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from attestation.tdx.base import CollateralKey, StoredCollateral
from attestation.tdx.collateral import CachingCollateralSource, FetchedCollateral
from kbs import db
from kbs.collateral_store import SqlCollateralStore, row_key
from kbs.errors import DatabaseUnavailableError
from support.tdx_pki import AT, TestPki

HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return TestPki.create()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def engine(request, tmp_path: Path) -> AsyncIterator[object]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'kbs.db'}"
    else:
        url = request.getfixturevalue("pg_database_url")
    db.migrate(url)
    engine = db.make_async_engine(url)
    yield engine
    await engine.dispose()


def _stored(pki: TestPki, *, fetched_at: dt.datetime = AT, **kwargs) -> StoredCollateral:
    collateral = pki.collateral(AT, **kwargs)
    return StoredCollateral(
        collateral_json=collateral.qvl_json,
        fetched_at=fetched_at,
        next_update=collateral.next_update,
        source_url="https://pccs.example/sgx/certification/v4/",
    )


async def test_round_trip_and_keys(engine, pki) -> None:
    store = SqlCollateralStore(engine)
    key = CollateralKey(pki.fmspc, "platform", "early")
    assert await store.load(key) is None
    stored = _stored(pki)
    await store.save(key, stored)
    assert await store.load(key) == stored
    assert await store.keys() == [key]
    assert row_key(key) == f"tdx/{pki.fmspc}/platform/early"


async def test_newest_wins(engine, pki) -> None:
    store = SqlCollateralStore(engine)
    key = CollateralKey(pki.fmspc, "platform")
    long = _stored(pki, validity=dt.timedelta(days=30))
    short = _stored(pki, validity=dt.timedelta(days=10), fetched_at=AT + HOUR)
    await store.save(key, long)
    await store.save(key, short)  # expires earlier: an older copy, kept out
    assert await store.load(key) == long
    again = _stored(pki, validity=dt.timedelta(days=30), fetched_at=AT + HOUR)
    await store.save(key, again)  # same collateral fetched later: replaces
    assert (await store.load(key)).fetched_at == AT + HOUR


async def test_junk_rows_are_ignored(engine, pki) -> None:
    store = SqlCollateralStore(engine)
    key = CollateralKey(pki.fmspc, "platform")
    async with engine.begin() as conn:
        await conn.execute(
            db.collateral.insert(),
            [
                {"key": row_key(key), "payload": "not json", "fetched_at": 0, "next_update": 0},
                {"key": "sgx/whatever", "payload": "{}", "fetched_at": 0, "next_update": 0},
                {
                    "key": "tdx/XYZ/platform/early",
                    "payload": "{}",
                    "fetched_at": 0,
                    "next_update": 0,
                },
            ],
        )
    assert await store.load(key) is None
    assert await store.keys() == [key]  # only well-formed keys are listed
    async with engine.begin() as conn:
        await conn.execute(
            db.collateral.update()
            .where(db.collateral.c.key == row_key(key))
            .values(payload=json.dumps({"format_version": "1", "source_url": 1}))
        )
    assert await store.load(key) is None


async def test_a_tampered_row_is_not_trusted(engine, pki) -> None:
    """The cache re-checks every signature of what it loads from the database."""
    store = SqlCollateralStore(engine)
    key = CollateralKey(pki.fmspc, "platform")
    stored = _stored(pki)
    body = json.loads(stored.collateral_json)
    body["tcb_info"] = body["tcb_info"].replace("UpToDate", "UpToDatf", 1)
    tampered = StoredCollateral(
        json.dumps(body), stored.fetched_at, stored.next_update, stored.source_url
    )
    await store.save(key, tampered)

    class Refusing:
        async def fetch(self, key: CollateralKey) -> FetchedCollateral:
            raise AssertionError(f"no pccs request expected for {key}")

    source = CachingCollateralSource(Refusing(), store=store, root_ca_der=pki.root_der)
    assert await source.preload(await store.keys()) == 0
    assert source.status(AT) == ()
    # The genuine copy loads.
    async with engine.begin() as conn:
        await conn.execute(sa.delete(db.collateral))
    await store.save(key, stored)
    assert await source.preload(await store.keys()) == 1
    assert source.status(AT)[0].valid


async def test_database_failure_is_ours(tmp_path: Path, pki) -> None:
    engine = db.make_async_engine(f"sqlite:///{tmp_path / 'missing-schema.db'}")
    store = SqlCollateralStore(engine)
    key = CollateralKey(pki.fmspc, "platform")
    with pytest.raises(DatabaseUnavailableError):
        await store.load(key)
    with pytest.raises(DatabaseUnavailableError):
        await store.save(key, _stored(pki))
    with pytest.raises(DatabaseUnavailableError):
        await store.keys()
    await engine.dispose()
