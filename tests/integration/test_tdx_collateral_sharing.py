# SPDX-License-Identifier: Apache-2.0
"""DCAP collateral in the database: replicas and restarts reuse it; the background refresh.

Every test drives real application instances over HTTP (in-process) against a loopback
fake PCCS, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from kbs import db
from kbs.collateral_store import SqlCollateralStore, row_key
from support.fake_pccs import FakePccs
from support.kbs_app import make_admin_key, now_clock, running_kbs
from support.tdx_guest import (
    PkiAttester,
    ccel,
    tdx_reference_values,
    tdx_settings,
)
from support.tdx_pki import TestPki


@pytest.fixture
def pccs() -> Iterator[FakePccs]:
    with FakePccs({}) as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("pg_database_url"))


async def _attest(kbs, guest: PkiAttester) -> str:
    async with kbs.guest(attester=guest) as client:
        return await client.attest()


async def test_replicas_and_restarts_reuse_stored_collateral_with_the_pccs_down(
    tmp_path: Path, pccs: FakePccs, database_url: str, shared_dir: Path
) -> None:
    clock = now_clock()
    pki = TestPki.create(root_cdp=pccs.cdp_url)
    parts = pki.collateral_parts(clock.now())
    pccs.parts = {parts.fmspc: parts}
    raw, rtmrs = ccel(shared_dir)
    guest = PkiAttester(pki, eventlog=raw, rtmrs=rtmrs)
    admin_key = make_admin_key(tmp_path)
    settings = tdx_settings(tmp_path, admin_key, pki, [pccs.url], database_url=database_url)
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(running_kbs(settings, clock=clock, admin_key=admin_key))
        b = await stack.enter_async_context(running_kbs(settings, clock=clock, admin_key=admin_key))
        await a.admin().set_reference_values(tdx_reference_values(rtmrs))
        # A fetches once and stores it; B, running beside it, finds it in the database.
        await _attest(a, guest)
        assert pccs.count() == 4
        pccs.down = True
        pccs.reset()
        await _attest(b, guest)
        await _attest(a, guest)
        assert pccs.count() == 0
    # The row is there, in our envelope.
    store = SqlCollateralStore(engine := db.make_async_engine(database_url))
    try:
        (key,) = await store.keys()
        assert row_key(key) == f"tdx/{pki.fmspc}/platform/early"
        stored = await store.load(key)
        assert stored is not None
        assert stored.source_url == pccs.url
    finally:
        await engine.dispose()
    # A restarted instance knows the platform at once (preloaded) and attests with the
    # PCCS still down.
    async with running_kbs(settings, clock=clock, admin_key=admin_key) as c:
        ready = (await c.http.get("/readyz")).json()
        assert ready["checks"]["collateral"] == "ok"
        assert ready["collateral"][0]["fmspc"] == pki.fmspc
        await _attest(c, guest)
    assert pccs.count() == 0


async def test_background_refresh_keeps_collateral_fresh_and_survives_failures(
    tmp_path: Path, pccs: FakePccs, caplog: pytest.LogCaptureFixture
) -> None:
    clock = now_clock()
    pki = TestPki.create(root_cdp=pccs.cdp_url)
    first = pki.collateral_parts(clock.now())
    pccs.parts = {first.fmspc: first}
    guest = PkiAttester(pki)
    dcap = {"refresh_interval_s": 0.02, "retry_interval_s": 0, "max_collateral_age_h": 12}
    settings = tdx_settings(tmp_path, None, pki, [pccs.url], dcap=dcap)
    async with running_kbs(settings, clock=clock) as kbs:
        await _attest(kbs, guest)
        entry = (await kbs.http.get("/readyz")).json()["collateral"][0]
        assert entry["fetched_at"] == clock.now().isoformat()
        # 13 hours on, the entry is due (max age 12 h). The PCCS fails for a while: the
        # refresh task logs, keeps running, and the stale copy is still served.
        pccs.down = True
        clock.advance(dt.timedelta(hours=13))
        await _wait_for(lambda: pccs.count("tcb?") >= 3)
        assert any("collateral refresh failed" in r.getMessage() for r in caplog.records)
        await _attest(kbs, guest)
        # The PCCS comes back with newer collateral: the next pass picks it up.
        second = pki.collateral_parts(clock.now(), crl_number=2)
        pccs.parts = {second.fmspc: second}
        pccs.down = False
        await _wait_for(lambda: _fresh(kbs))
        entry = (await kbs.http.get("/readyz")).json()["collateral"][0]
        assert entry["fetched_at"] == clock.now().isoformat()
        assert entry["next_update"] == second.next_update.isoformat()
        assert entry["last_error"] is None
        tasks = {t.get_name() for t in asyncio.all_tasks()}
        assert "kbs-collateral-refresh" in tasks
    # Shutdown cancelled it.
    await asyncio.sleep(0)
    assert "kbs-collateral-refresh" not in {t.get_name() for t in asyncio.all_tasks()}


def _fresh(kbs) -> bool:
    statuses = kbs.app.state.kbs.tdx.source.status(kbs.clock.now())
    return bool(statuses) and statuses[0].fresh


async def _wait_for(condition, limit_s: float = 10.0) -> None:
    async with asyncio.timeout(limit_s):
        while not condition():  # noqa: ASYNC110 - the state belongs to other tasks and threads
            await asyncio.sleep(0.02)
