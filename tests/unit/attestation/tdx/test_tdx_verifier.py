# SPDX-License-Identifier: Apache-2.0
"""TdxVerifier end to end: evidence JSON -> claims, over a fake PCCS or fixed collateral."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import httpx
import pytest

from attestation.base import NOT_PROVIDED
from attestation.errors import (
    BindingMismatchError,
    CollateralUnavailableError,
    EvidenceInvalidError,
)
from attestation.tdx.base import Collateral
from attestation.tdx.collateral import CachingCollateralSource, PccsFetcher
from attestation.tdx.errors import EventLogReplayError, PckChainError, QuoteParseError
from attestation.tdx.eventlog import parse_event_log
from attestation.tdx.verifier import TdxVerifier
from support.fake_pccs import FakePccs
from support.tdx_pki import AT, StaticCollateralSource, TestPki

RUNTIME_DIGEST = hashlib.sha384(b'{"nonce":"n","tee-pubkey":{}}').digest()
INIT_DIGEST = hashlib.sha256(b"algorithm = 'sha256'\n").digest()


def _evidence(quote: bytes, eventlog: bytes | None = None) -> dict:
    return {
        "quote": base64.b64encode(quote).decode(),
        "cc_eventlog": None if eventlog is None else base64.b64encode(eventlog).decode(),
    }


@pytest.fixture(scope="module")
def pki():
    return TestPki.create()


@pytest.fixture(scope="module")
def ccel(shared_dir):
    raw = (shared_dir / "testdata/trustee/CCEL_data").read_bytes()
    log = parse_event_log(raw)
    return raw, [log.replay(i) for i in range(1, 5)]


@pytest.fixture
def verifier(pki, tdx_executor):
    return TdxVerifier(
        collateral=StaticCollateralSource(pki.collateral()),
        root_ca_der=pki.root_der,
        executor=tdx_executor,
    )


def _bound_quote(pki, ccel, **kwargs):
    return pki.quote(
        report_data=RUNTIME_DIGEST + bytes(16),
        mr_config_id=INIT_DIGEST + bytes(16),
        rtmrs=ccel[1],
        **kwargs,
    )


@pytest.mark.parametrize(("version", "body_type"), [(4, 2), (5, 3), (5, 4)])
async def test_bound_evidence_verifies(pki, ccel, verifier, version, body_type):
    quote = _bound_quote(pki, ccel, version=version, body_type=body_type)
    result = await verifier.verify(
        _evidence(quote, ccel[0]), report_data=RUNTIME_DIGEST, init_data_hash=INIT_DIGEST, at=AT
    )
    assert result.tee == "tdx"
    assert result.tee_class == "cpu"
    claims = result.claims
    assert claims["report_data"] == (RUNTIME_DIGEST + bytes(16)).hex()
    assert claims["init_data"] == (INIT_DIGEST + bytes(16)).hex()
    assert claims["tcb_status"] == "UpToDate"
    assert claims["td_attributes"]["septve_disable"] is True
    assert claims["td_attributes"]["debug"] is False
    assert claims["quote"]["body"]["rtmr_0"] == ccel[1][0].hex()
    assert len(claims["uefi_event_logs"]) == 5
    assert claims["platform_instance_id"]
    assert claims["collateral_expiration_status"] == "0"
    if version == 5:
        assert claims["quote"]["type"] == f"0{body_type}00"
    json.dumps(claims)  # the claims are plain JSON


async def test_bindings_can_be_skipped_explicitly(pki, verifier):
    result = await verifier.verify(
        _evidence(pki.quote()), report_data=NOT_PROVIDED, init_data_hash=NOT_PROVIDED, at=AT
    )
    assert "uefi_event_logs" not in result.claims


async def test_json_string_evidence_and_empty_eventlog(pki, verifier):
    evidence = json.dumps({"quote": base64.b64encode(pki.quote()).decode(), "cc_eventlog": ""})
    await verifier.verify(evidence, report_data=NOT_PROVIDED, init_data_hash=NOT_PROVIDED, at=AT)


async def test_wrong_report_data(pki, ccel, verifier):
    quote = _bound_quote(pki, ccel)
    with pytest.raises(BindingMismatchError, match="report_data"):
        await verifier.verify(
            _evidence(quote), report_data=b"\x00" * 48, init_data_hash=NOT_PROVIDED, at=AT
        )


async def test_wrong_mr_config_id(pki, ccel, verifier):
    quote = _bound_quote(pki, ccel)
    with pytest.raises(BindingMismatchError, match="mr_config_id"):
        await verifier.verify(
            _evidence(quote), report_data=RUNTIME_DIGEST, init_data_hash=b"\x01" * 32, at=AT
        )


async def test_sha512_init_data_is_truncated_like_the_reference(pki, verifier):
    digest = hashlib.sha512(b"init").digest()
    quote = pki.quote(mr_config_id=digest[:48])
    await verifier.verify(_evidence(quote), report_data=NOT_PROVIDED, init_data_hash=digest, at=AT)


async def test_tampered_event_log(pki, ccel, verifier):
    raw = bytearray(ccel[0])
    # Flip a byte of the first event's SHA-384 digest (after the spec id header event).
    header_size = 32 + int.from_bytes(raw[28:32], "little")
    raw[header_size + 14] ^= 0x01
    with pytest.raises(EventLogReplayError, match="rtmr0"):
        await verifier.verify(
            _evidence(_bound_quote(pki, ccel), bytes(raw)),
            report_data=RUNTIME_DIGEST,
            init_data_hash=INIT_DIGEST,
            at=AT,
        )


async def test_event_log_for_other_rtmrs(pki, ccel, verifier):
    with pytest.raises(EventLogReplayError):
        await verifier.verify(
            _evidence(pki.quote(), ccel[0]),
            report_data=NOT_PROVIDED,
            init_data_hash=NOT_PROVIDED,
            at=AT,
        )


async def test_a_remembered_event_log_is_still_replayed_against_each_quote(pki, ccel, verifier):
    """The parsed log is kept by its bytes' digest; each quote's RTMRs are checked anew."""
    from attestation.tdx.verifier import _parsed_event_log  # noqa: PLC0415

    assert _parsed_event_log(ccel[0]) is _parsed_event_log(bytes(ccel[0]))
    good = await verifier.verify(
        _evidence(_bound_quote(pki, ccel), ccel[0]),
        report_data=RUNTIME_DIGEST,
        init_data_hash=INIT_DIGEST,
        at=AT,
    )
    assert good.claims["uefi_event_logs"]
    # The same (remembered) log with a quote whose RTMRs it does not replay to.
    with pytest.raises(EventLogReplayError):
        await verifier.verify(
            _evidence(pki.quote(), ccel[0]),
            report_data=NOT_PROVIDED,
            init_data_hash=NOT_PROVIDED,
            at=AT,
        )


@pytest.mark.parametrize(
    ("evidence", "match"),
    [
        ([], "json object"),
        ("not json", "not json"),
        ({}, "lacks a quote"),
        ({"quote": ""}, "empty"),
        ({"quote": "!!!"}, "base64"),
        ({"quote": "AAAA", "cc_eventlog": 5}, "cc_eventlog"),
        ({"quote": "A" * 100_000}, "too large"),
        ({"quote": base64.b64encode(b"\x04\x00\x02\x00\x81" + bytes(75)).decode()}, "truncated"),
    ],
)
async def test_malformed_evidence(verifier, evidence, match):
    with pytest.raises(EvidenceInvalidError, match=match):
        await verifier.verify(
            evidence, report_data=NOT_PROVIDED, init_data_hash=NOT_PROVIDED, at=AT
        )


async def test_bit_flipped_quote(pki, verifier):
    raw = bytearray(pki.quote())
    raw[48 + 200] ^= 0x80
    with pytest.raises(EvidenceInvalidError, match="signature"):
        await verifier.verify(
            _evidence(bytes(raw)), report_data=NOT_PROVIDED, init_data_hash=NOT_PROVIDED, at=AT
        )


async def test_debug_td(pki, verifier):
    with pytest.raises(EvidenceInvalidError, match="debug"):
        await verifier.verify(
            _evidence(pki.quote(td_attributes=(1 << 28) | 1)),
            report_data=NOT_PROVIDED,
            init_data_hash=NOT_PROVIDED,
            at=AT,
        )


async def test_foreign_root_is_refused_before_collateral(pki):
    source = StaticCollateralSource(pki.collateral())
    other = TestPki.create(fmspc="00A06D080000")
    verifier = TdxVerifier(collateral=source, root_ca_der=pki.root_der)
    with pytest.raises(PckChainError, match="trusted root"):
        await verifier.verify(
            _evidence(other.quote()), report_data=NOT_PROVIDED, init_data_hash=NOT_PROVIDED, at=AT
        )
    assert source.calls == 0


async def test_naive_time_refused(verifier, pki):
    with pytest.raises(ValueError, match="timezone"):
        await verifier.verify(
            _evidence(pki.quote()),
            report_data=NOT_PROVIDED,
            init_data_hash=NOT_PROVIDED,
            at=dt.datetime(2026, 1, 1),  # noqa: DTZ001
        )


@pytest.mark.parametrize("pool", [ThreadPoolExecutor, ProcessPoolExecutor])
async def test_executor(pki, ccel, pool):
    with pool(max_workers=1) as executor:
        verifier = TdxVerifier(
            collateral=StaticCollateralSource(pki.collateral()),
            root_ca_der=pki.root_der,
            executor=executor,
        )
        result = await verifier.verify(
            _evidence(_bound_quote(pki, ccel), ccel[0]),
            report_data=RUNTIME_DIGEST,
            init_data_hash=INIT_DIGEST,
            at=AT,
        )
        assert result.claims["tcb_status"] == "UpToDate"
        with pytest.raises(BindingMismatchError):
            await verifier.verify(
                _evidence(_bound_quote(pki, ccel)),
                report_data=bytes(48),
                init_data_hash=NOT_PROVIDED,
                at=AT,
            )


# ---------------------------------------------------------------- over HTTP


async def test_end_to_end_over_fake_pccs(ccel):
    with FakePccs({}) as pccs, FakePccs({}) as backup:
        pki = TestPki.create(root_cdp=pccs.cdp_url)
        parts = pki.collateral_parts(AT)
        pccs.parts = backup.parts = {parts.fmspc: parts}
        async with httpx.AsyncClient() as client:
            fetcher = PccsFetcher(
                client, base_urls=[pccs.url, backup.url], root_ca_der=pki.root_der
            )
            source = CachingCollateralSource(fetcher, root_ca_der=pki.root_der)
            verifier = TdxVerifier(collateral=source, root_ca_der=pki.root_der)

            async def attest(at):
                return await verifier.verify(
                    _evidence(_bound_quote(pki, ccel), ccel[0]),
                    report_data=RUNTIME_DIGEST,
                    init_data_hash=INIT_DIGEST,
                    at=at,
                )

            # Primary down: failover to the backup.
            pccs.down = True
            assert (await attest(AT)).claims["tcb_status"] == "UpToDate"
            assert backup.count() == 4
            # Warm cache: both down, no requests, still verifies.
            backup.down = True
            pccs.reset()
            backup.reset()
            await attest(AT + dt.timedelta(hours=1))
            assert pccs.count() == backup.count() == 0
            assert source.status(AT)[0].source_url == backup.url


async def test_cold_cache_pccs_down_is_unavailable(pki):
    with FakePccs({}) as pccs:
        pccs.down = True
        async with httpx.AsyncClient() as client:
            fetcher = PccsFetcher(client, base_urls=[pccs.url], root_ca_der=pki.root_der)
            verifier = TdxVerifier(
                collateral=CachingCollateralSource(fetcher, root_ca_der=pki.root_der),
                root_ca_der=pki.root_der,
            )
            with pytest.raises(CollateralUnavailableError):
                await verifier.verify(
                    _evidence(pki.quote()),
                    report_data=NOT_PROVIDED,
                    init_data_hash=NOT_PROVIDED,
                    at=AT,
                )


# ---------------------------------------------------------------- real quotes


def _cases(shared_dir):
    return json.loads((shared_dir / "testdata/tdx/expected.json").read_text())


@pytest.mark.parametrize("index", range(7))
async def test_real_quotes_through_the_verifier(shared_dir, index):
    case = _cases(shared_dir)[index]
    tdx = shared_dir / "testdata/tdx"
    raw = (tdx / case["quote"]).read_bytes()
    collateral = Collateral.from_qvl_json((tdx / case["collateral"]).read_text())
    verifier = TdxVerifier(collateral=StaticCollateralSource(collateral))  # pinned Intel root
    report_data = bytes.fromhex(case["measurements"]["report_data"])

    async def verify(seconds):
        return await verifier.verify(
            _evidence(raw),
            report_data=report_data,
            init_data_hash=bytes.fromhex(case["measurements"]["mr_config_id"]),
            at=dt.datetime.fromtimestamp(seconds, dt.UTC),
        )

    if case["result"] == "ok":
        for seconds in (case["verify_at"], case["window_to_inclusive"]):
            claims = (await verify(seconds)).claims
            assert claims["tcb_status"] == case["status_or_error"]
            assert claims["advisory_ids"] == case["advisory_ids"]
            assert claims["quote"]["body"]["mr_td"] == case["measurements"]["mr_td"]
            assert claims["report_data"] == case["measurements"]["report_data"]
    else:
        with pytest.raises(EvidenceInvalidError, match="no matching tcb level"):
            await verify(case["verify_at"])
    with pytest.raises(EvidenceInvalidError, match="expired"):
        await verify(case["window_to_inclusive"] + 1)


async def test_reference_quote_without_collateral(shared_dir):
    """quote_4 (debug TD, FMSPC without collateral here) fails as "could not check"."""
    raw = (shared_dir / "testdata/trustee/verifier-tdx_quote_4.dat").read_bytes()
    verifier = TdxVerifier(collateral=StaticCollateralSource())
    with pytest.raises(CollateralUnavailableError):
        await verifier.verify(
            _evidence(raw), report_data=NOT_PROVIDED, init_data_hash=NOT_PROVIDED, at=AT
        )


async def test_sgx_quote_is_not_tdx_evidence(pki, verifier):
    raw = bytearray(pki.quote())
    raw[0:2] = (3).to_bytes(2, "little")
    raw[4:8] = bytes(4)
    with pytest.raises(QuoteParseError, match="sgx"):
        await verifier.verify(
            _evidence(bytes(raw)), report_data=NOT_PROVIDED, init_data_hash=NOT_PROVIDED, at=AT
        )


async def test_process_pool_claims_equal_inline_claims(pki, ccel, verification_pool):
    source = StaticCollateralSource(pki.collateral())
    evidence = _evidence(_bound_quote(pki, ccel), ccel[0])
    kwargs = {"report_data": RUNTIME_DIGEST, "init_data_hash": INIT_DIGEST, "at": AT}
    inline = TdxVerifier(collateral=source, root_ca_der=pki.root_der)
    pooled = TdxVerifier(collateral=source, root_ca_der=pki.root_der, executor=verification_pool)
    expected = await inline.verify(evidence, **kwargs)
    assert "uefi_event_logs" in expected.claims
    assert await pooled.verify(evidence, **kwargs) == expected
