# SPDX-License-Identifier: Apache-2.0
"""PCCS fetcher, failover, cache, persistence and refresh, over HTTP against a fake PCCS."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import replace

import httpx
import pytest

from attestation.errors import CollateralUnavailableError, VerifierUnavailableError
from attestation.tdx import collateral as collateral_module
from attestation.tdx.base import CollateralKey, StoredCollateral
from attestation.tdx.collateral import (
    CachingCollateralSource,
    MemoryCollateralStore,
    PccsFetcher,
)
from support.fake_pccs import FakePccs, pccs_response
from support.tdx_pki import AT, TestPki

HOUR = dt.timedelta(hours=1)


@pytest.fixture
def pccs():
    with FakePccs({}) as server:
        yield server


@pytest.fixture
def pki(pccs):
    pki = TestPki.create(root_cdp=pccs.cdp_url)
    parts = pki.collateral_parts(AT)
    pccs.parts = {parts.fmspc: parts}
    return pki


@pytest.fixture
async def client():
    async with httpx.AsyncClient() as http:
        yield http


def _fetcher(client, pki, *urls):
    return PccsFetcher(client, base_urls=urls, root_ca_der=pki.root_der, timeout=5.0)


def _key(pki):
    return CollateralKey(pki.fmspc, "platform")


# ---------------------------------------------------------------- fetcher


async def test_fetch_builds_checked_collateral(client, pki, pccs):
    fetched = await _fetcher(client, pki, pccs.url).fetch(_key(pki))
    expected = pccs.parts[pki.fmspc].collateral()
    assert fetched.collateral.digest == expected.digest
    assert fetched.source_url == pccs.url
    assert pccs.count() == 4
    assert pccs.count("pckcrl?ca=platform&encoding=der") == 1
    assert pccs.count(f"tcb?fmspc={pki.fmspc}&update=standard") == 1
    assert pccs.count("qe/identity?update=standard") == 1
    assert pccs.count("rootcacrl") == 1


async def test_base_url_forms(client, pki, pccs):
    for url in (pccs.origin, pccs.origin + "/", pccs.origin + "/tdx/certification/v4"):
        await _fetcher(client, pki, url).fetch(_key(pki))


async def test_root_crl_from_cdp_when_rootcacrl_missing(client, pki, pccs):
    pccs.serve_rootcacrl = False
    fetched = await _fetcher(client, pki, pccs.url).fetch(_key(pki))
    assert fetched.collateral.root_ca_crl_next_update > AT
    assert pccs.count("/root.crl") == 1


async def test_failover_in_order(client, pki, pccs):
    with FakePccs(pccs.parts) as second:
        pccs.status = 500
        fetched = await _fetcher(client, pki, pccs.url, second.url).fetch(_key(pki))
        assert fetched.source_url == second.url
        pccs.status = None
        pccs.down = True
        fetched = await _fetcher(client, pki, pccs.url, second.url).fetch(_key(pki))
        assert fetched.source_url == second.url


async def test_all_sources_down(client, pki, pccs):
    pccs.down = True
    with pytest.raises(CollateralUnavailableError, match="could not fetch") as info:
        await _fetcher(client, pki, pccs.url).fetch(_key(pki))
    assert isinstance(info.value, VerifierUnavailableError)


async def test_unknown_fmspc_is_unavailable(client, pki, pccs):
    with pytest.raises(CollateralUnavailableError, match="404"):
        await _fetcher(client, pki, pccs.url).fetch(CollateralKey("00A06D080000", "platform"))


async def test_oversized_response(client, pki, pccs, monkeypatch):
    monkeypatch.setattr(collateral_module, "MAX_JSON_BYTES", 100)
    with pytest.raises(CollateralUnavailableError, match="too large"):
        await _fetcher(client, pki, pccs.url).fetch(_key(pki))


async def test_tampered_collateral_is_refused(client, pki, pccs):
    parts = pccs.parts[pki.fmspc]
    pccs.parts = {
        pki.fmspc: replace(parts, tcb_info=parts.tcb_info.replace('"tcbType":0', '"tcbType":1'))
    }
    with pytest.raises(CollateralUnavailableError, match="signature"):
        await _fetcher(client, pki, pccs.url).fetch(_key(pki))


async def test_collateral_from_another_root_is_refused(client, pki, pccs):
    other = TestPki.create()
    with pytest.raises(CollateralUnavailableError, match="trusted root"):
        await _fetcher(client, other, pccs.url).fetch(_key(pki))


async def test_uncached_source(client, pki, pccs):
    fetcher = _fetcher(client, pki, pccs.url)
    got = await fetcher.get_collateral(pki.fmspc, "platform", at=AT)
    assert got.valid_at(AT)
    with pytest.raises(CollateralUnavailableError, match="not valid"):
        await fetcher.get_collateral(pki.fmspc, "platform", at=AT + dt.timedelta(days=60))


def test_fetcher_validates_urls():
    with pytest.raises(ValueError, match="http"):
        PccsFetcher(httpx.AsyncClient(), base_urls=["file:///etc/pccs.json"])
    with pytest.raises(ValueError, match="at least one"):
        PccsFetcher(httpx.AsyncClient(), base_urls=[])


# ---------------------------------------------------------------- cache


_SOURCES: list[CachingCollateralSource] = []


@pytest.fixture(autouse=True)
async def _close_sources():
    # Background refreshes must not outlive the test (and its HTTP client).
    yield
    while _SOURCES:
        await _SOURCES.pop().aclose()


def _source(client, pki, pccs, store=None, **kwargs):
    source = CachingCollateralSource(
        _fetcher(client, pki, pccs.url), store=store, root_ca_der=pki.root_der, **kwargs
    )
    _SOURCES.append(source)
    return source


async def _settled(source: CachingCollateralSource) -> None:
    """Wait for the background refreshes under way."""
    await asyncio.gather(*source._inflight.values(), return_exceptions=True)


async def test_warm_cache_makes_no_requests(client, pki, pccs):
    source = _source(client, pki, pccs)
    first = await source.get_collateral(pki.fmspc, "platform", at=AT)
    pccs.reset()
    pccs.down = True
    for minutes in (0, 1, 60, 11 * 60):
        got = await source.get_collateral(
            pki.fmspc, "platform", at=AT + dt.timedelta(minutes=minutes)
        )
        assert got is first
    assert pccs.count() == 0


async def test_cold_cache_with_pccs_down(client, pki, pccs):
    pccs.down = True
    source = _source(client, pki, pccs)
    with pytest.raises(CollateralUnavailableError):
        await source.get_collateral(pki.fmspc, "platform", at=AT)
    # Within the retry interval no new attempt is made: fail fast.
    pccs.reset()
    with pytest.raises(CollateralUnavailableError, match="last error"):
        await source.get_collateral(pki.fmspc, "platform", at=AT + dt.timedelta(seconds=30))
    assert pccs.count() == 0
    # After it, the PCCS is tried again (and now answers).
    pccs.down = False
    got = await source.get_collateral(pki.fmspc, "platform", at=AT + dt.timedelta(seconds=61))
    assert got.valid_at(AT)
    status = source.status(AT + dt.timedelta(seconds=61))[0]
    assert status.last_error is None
    assert status.fresh


async def test_stale_cache_refreshes_on_demand_or_serves_stale(client, pki, pccs):
    source = _source(client, pki, pccs)
    first = await source.get_collateral(pki.fmspc, "platform", at=AT)
    stale_at = AT + 13 * HOUR  # past max_age (12 h), long before expiry
    # PCCS down: the stale-but-valid copy is served at once; one background attempt, then
    # rate-limited.
    pccs.reset()
    pccs.down = True
    assert await source.get_collateral(pki.fmspc, "platform", at=stale_at) is first
    await _settled(source)
    attempts = pccs.count()
    assert attempts >= 1
    assert (
        await source.get_collateral(pki.fmspc, "platform", at=stale_at + dt.timedelta(seconds=10))
        is first
    )
    assert pccs.count() == attempts
    status = source.status(stale_at)[0]
    assert not status.fresh
    assert status.valid
    assert "could not fetch" in status.last_error
    # PCCS back with newer collateral: the next request after the retry interval is still
    # served the stale copy without waiting, and starts the refresh that the following
    # requests see.
    pccs.down = False
    newer = pki.collateral_parts(stale_at, eval_number=18)
    pccs.parts = {pki.fmspc: newer}
    later = stale_at + dt.timedelta(minutes=2)
    assert await source.get_collateral(pki.fmspc, "platform", at=later) is first
    await _settled(source)
    got = await source.get_collateral(pki.fmspc, "platform", at=later)
    assert got.digest == newer.collateral().digest
    assert got.tcb_evaluation_data_number == 18


async def test_expired_cache_with_pccs_down(client, pki, pccs):
    source = _source(client, pki, pccs)
    await source.get_collateral(pki.fmspc, "platform", at=AT)
    pccs.down = True
    with pytest.raises(CollateralUnavailableError):
        await source.get_collateral(pki.fmspc, "platform", at=AT + dt.timedelta(days=30))


async def test_persisted_cache_survives_restart_with_pccs_down(client, pki, pccs):
    store = MemoryCollateralStore()
    first = await _source(client, pki, pccs, store).get_collateral(pki.fmspc, "platform", at=AT)
    assert store.saves == 1
    pccs.reset()
    pccs.down = True
    restarted = _source(client, pki, pccs, store)
    got = await restarted.get_collateral(pki.fmspc, "platform", at=AT + HOUR)
    assert got.digest == first.digest
    assert pccs.count() == 0
    status = restarted.status(AT + HOUR)[0]
    assert status.source_url == pccs.url
    assert status.fetched_at == AT


async def test_restart_with_stale_store_and_pccs_down(client, pki, pccs):
    store = MemoryCollateralStore()
    first = await _source(client, pki, pccs, store).get_collateral(pki.fmspc, "platform", at=AT)
    pccs.down = True
    restarted = _source(client, pki, pccs, store)
    stale_at = AT + 13 * HOUR
    got = await restarted.get_collateral(pki.fmspc, "platform", at=stale_at)
    assert got.digest == first.digest
    assert "could not fetch" in restarted.status(stale_at)[0].last_error


async def test_store_with_foreign_collateral_is_ignored(client, pki, pccs):
    store = MemoryCollateralStore()
    other = TestPki.create(fmspc=pki.fmspc)
    parts = other.collateral_parts(AT)
    store.items[_key(pki)] = StoredCollateral(
        collateral_json=parts.collateral().qvl_json,
        fetched_at=AT,
        next_update=parts.next_update,
        source_url="https://elsewhere/",
    )
    source = _source(client, pki, pccs, store)
    got = await source.get_collateral(pki.fmspc, "platform", at=AT)
    assert got.digest == pccs.parts[pki.fmspc].collateral().digest
    assert pccs.count() == 4


async def test_broken_store_does_not_stop_attestation(client, pki, pccs):
    class BrokenStore:
        async def load(self, _key):
            raise OSError("database down")

        async def save(self, _key, _stored):
            raise OSError("database down")

    source = _source(client, pki, pccs, BrokenStore())
    assert (await source.get_collateral(pki.fmspc, "platform", at=AT)).valid_at(AT)


async def test_refresh_due_before_next_update(client, pki, pccs):
    source = _source(
        client, pki, pccs, refresh_margin=dt.timedelta(days=2), max_age=dt.timedelta(days=100)
    )
    first = await source.get_collateral(pki.fmspc, "platform", at=AT)
    # Not due yet: nothing happens.
    pccs.reset()
    report = await source.refresh_due(AT + HOUR)
    assert report.refreshed == report.failed == ()
    assert pccs.count() == 0
    # Due 2 days before the earliest nextUpdate (AT + 29 days).
    due = first.next_update - dt.timedelta(days=2)
    newer = pki.collateral_parts(due, eval_number=18)
    pccs.parts = {pki.fmspc: newer}
    report = await source.refresh_due(due)
    assert report.refreshed == (_key(pki),)
    got = await source.get_collateral(pki.fmspc, "platform", at=due)
    assert got.digest == newer.collateral().digest
    assert got.next_update > first.next_update
    status = source.status(due)[0]
    assert status.fresh
    assert status.fetched_at == due
    assert status.as_dict()["fmspc"] == pki.fmspc


async def test_refresh_due_records_failures(client, pki, pccs):
    source = _source(client, pki, pccs)
    await source.get_collateral(pki.fmspc, "platform", at=AT)
    pccs.status = 503
    report = await source.refresh_due(AT + 13 * HOUR)
    assert report.failed == (_key(pki),)
    status = source.status(AT + 13 * HOUR)[0]
    assert "HTTP 503" in status.last_error
    assert status.valid


async def test_rollback_is_refused(client, pki, pccs):
    pccs.parts = {pki.fmspc: pki.collateral_parts(AT, eval_number=18)}
    source = _source(client, pki, pccs)
    first = await source.get_collateral(pki.fmspc, "platform", at=AT)
    pccs.parts = {pki.fmspc: pki.collateral_parts(AT + 13 * HOUR, eval_number=17)}
    got = await source.get_collateral(pki.fmspc, "platform", at=AT + 13 * HOUR)
    assert got is first
    await _settled(source)
    assert await source.get_collateral(pki.fmspc, "platform", at=AT + 13 * HOUR) is first
    assert "older than cached" in source.status(AT + 13 * HOUR)[0].last_error


async def test_concurrent_cold_requests_share_one_fetch(client, pki, pccs):
    pccs.delay = 0.05
    source = _source(client, pki, pccs)
    results = await asyncio.gather(
        *(source.get_collateral(pki.fmspc, "platform", at=AT) for _ in range(20))
    )
    assert len({id(r) for r in results}) == 1
    assert pccs.count() == 4


async def test_a_request_arriving_during_a_cold_fetch_joins_it(client, pki, pccs):
    """Staggered arrivals (real traffic), not a gather of coroutines created together."""
    pccs.delay = 0.1
    source = _source(client, pki, pccs)
    first = asyncio.ensure_future(source.get_collateral(pki.fmspc, "platform", at=AT))
    await asyncio.sleep(0.03)  # the fetch is under way: the entry exists, no collateral yet
    later = await source.get_collateral(pki.fmspc, "platform", at=AT + dt.timedelta(seconds=1))
    assert (await first) is later
    assert pccs.count() == 4


async def test_cancelled_request_does_not_cancel_shared_fetch(client, pki, pccs):
    pccs.delay = 0.05
    source = _source(client, pki, pccs)
    first = asyncio.ensure_future(source.get_collateral(pki.fmspc, "platform", at=AT))
    second = asyncio.ensure_future(source.get_collateral(pki.fmspc, "platform", at=AT))
    await asyncio.sleep(0.01)
    first.cancel()
    assert (await second).valid_at(AT)


async def test_memory_store_roundtrip():
    store = MemoryCollateralStore()
    key = CollateralKey("00906ED50000", "platform")
    assert await store.load(key) is None
    item = StoredCollateral("{}", AT, AT, "u")
    await store.save(key, item)
    assert await store.load(key) is item


def test_key_validation():
    with pytest.raises(ValueError, match="fmspc"):
        CollateralKey("00906ed50000", "platform")
    with pytest.raises(ValueError, match="ca"):
        CollateralKey("00906ED50000", "other")  # type: ignore[arg-type]
    assert str(CollateralKey("00906ED50000", "platform")) == "00906ED50000/platform/standard"


# ---------------------------------------------------------------- Intel PCS (mocked transport)


async def test_intel_pcs_uses_root_cdp_and_update_type():
    cdp = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
    pki = TestPki.create(root_cdp=cdp)
    parts = pki.collateral_parts(AT)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if str(request.url) == cdp:
            return httpx.Response(200, content=parts.root_ca_crl)
        assert request.url.host == "api.trustedservices.intel.com"
        query = {k: [v] for k, v in request.url.params.items()}
        status, headers, body = pccs_response({parts.fmspc: parts}, request.url.path, query)
        return httpx.Response(status, headers=headers, content=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        fetcher = PccsFetcher(
            http, base_urls=[collateral_module.INTEL_PCS_URL], root_ca_der=pki.root_der
        )
        fetched = await fetcher.fetch(CollateralKey(pki.fmspc, "platform", "early"))
    assert fetched.collateral.key.tcb_update_type == "early"
    assert not any("rootcacrl" in url for url in seen)
    assert cdp in seen
    assert (
        f"https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc={pki.fmspc}&update=early"
        in seen
    )
    assert (
        "https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=platform&encoding=der"
        in seen
    )


async def test_a_failed_attempt_leaves_no_request_behind():
    """One piece failing cancels the others before the next base URL is tried."""
    pki = TestPki.create()
    parts = pki.collateral_parts(AT)
    started: list[str] = []
    cancelled: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        started.append(f"{request.url.host}{request.url.path}")
        if request.url.host == "first" and request.url.path.endswith("pckcrl"):
            raise httpx.ConnectError("refused", request=request)
        if request.url.host == "first":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(request.url.path)
                raise
        query = {k: [v] for k, v in request.url.params.items()}
        status, headers, body = pccs_response({parts.fmspc: parts}, request.url.path, query)
        return httpx.Response(status, headers=headers, content=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        fetcher = PccsFetcher(
            http, base_urls=["http://first", "http://second"], root_ca_der=pki.root_der
        )
        async with asyncio.timeout(5):
            fetched = await fetcher.fetch(_key(pki))
    assert fetched.source_url == "http://second"
    assert sorted(cancelled) == [
        "/tdx/certification/v4/qe/identity",
        "/tdx/certification/v4/tcb",
    ]
    # Nothing from the first URL started after the second one was asked.
    first_second = next(i for i, url in enumerate(started) if url.startswith("second"))
    assert all(url.startswith("second") for url in started[first_second:])


def test_cache_parameters_are_checked(client, pki):
    fetcher = _fetcher(client, pki, "http://127.0.0.1:9/")
    with pytest.raises(ValueError, match="max_age"):
        CachingCollateralSource(fetcher, max_age=dt.timedelta(0))
    with pytest.raises(ValueError, match="refresh_margin"):
        CachingCollateralSource(fetcher, refresh_margin=-HOUR)


async def test_aclose_cancels_fetches_under_way(client, pki, pccs):
    pccs.delay = 1.0
    source = _source(client, pki, pccs)
    waiter = asyncio.ensure_future(source.get_collateral(pki.fmspc, "platform", at=AT))
    await asyncio.sleep(0.05)
    assert source._inflight
    async with asyncio.timeout(0.5):
        await source.aclose()
    assert not source._inflight
    with pytest.raises(asyncio.CancelledError):
        await waiter


# ---------------------------------------------------------------- observer (metrics)


class _Recorder:
    """A CollateralObserver that remembers what it was told."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bool]] = []
        self.lookups: list[str] = []

    def pccs_request(self, endpoint: str, *, ok: bool) -> None:
        self.requests.append((endpoint, ok))

    def collateral_lookup(self, result: str) -> None:
        self.lookups.append(result)


async def test_observer_hears_every_pccs_request_and_lookup(client, pki, pccs):
    seen = _Recorder()
    fetcher = PccsFetcher(
        client, base_urls=[pccs.url], root_ca_der=pki.root_der, timeout=5.0, observer=seen
    )
    source = CachingCollateralSource(fetcher, root_ca_der=pki.root_der, observer=seen)
    _SOURCES.append(source)
    await source.get_collateral(pki.fmspc, "platform", at=AT)  # miss: fetched
    await source.get_collateral(pki.fmspc, "platform", at=AT)  # hit
    assert sorted(seen.requests) == [
        ("pckcrl", True),
        ("qe_identity", True),
        ("rootcacrl", True),
        ("tcb", True),
    ]
    # Past max_age with the PCCS failing: served stale, the background refresh fails.
    pccs.status = 500
    await source.get_collateral(pki.fmspc, "platform", at=AT + 13 * HOUR)
    await _settled(source)
    assert seen.lookups == ["miss", "hit", "stale"]
    failed = [endpoint for endpoint, ok in seen.requests[4:] if not ok]
    assert failed
    assert set(failed) <= {"pckcrl", "tcb", "qe_identity"}
