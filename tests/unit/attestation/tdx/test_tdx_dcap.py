# SPDX-License-Identifier: Apache-2.0
"""The DCAP step against real Intel-signed quotes (pinned root) and a private test PKI."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest

from attestation.errors import EvidenceInvalidError
from attestation.tdx.base import Collateral, CollateralError
from attestation.tdx.dcap import (
    INTEL_SGX_ROOT_CA_SHA256,
    PlatformPolicy,
    intel_root_ca_der,
    root_key_id,
    verify_quote,
)
from support.tdx_pki import AT, SEPT_VE_DISABLE, TD_DEBUG, TcbLevel, TestPki

INTEL_ROOT_KEY_ID = (
    "46e403bd34f05a3f2817ab9badcaacc7ffc98e0f261008cd30dae936cace18d5"
    "dcf58eef31463613de1570d516200993"
)
POLICY = PlatformPolicy()


def _at(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _cases(shared_dir):
    return json.loads((shared_dir / "testdata/tdx/expected.json").read_text())


def test_intel_root_is_pinned():
    der = intel_root_ca_der()
    assert hashlib.sha256(der).hexdigest() == INTEL_SGX_ROOT_CA_SHA256
    assert root_key_id(der) == INTEL_ROOT_KEY_ID


@pytest.mark.parametrize("index", range(7))
def test_real_quotes_at_their_times(shared_dir, index):
    case = _cases(shared_dir)[index]
    tdx = shared_dir / "testdata/tdx"
    raw = (tdx / case["quote"]).read_bytes()
    collateral = Collateral.from_qvl_json((tdx / case["collateral"]).read_text())
    root = intel_root_ca_der()
    collateral.check_signatures(root)
    assert collateral.key.fmspc == case["fmspc"]

    def verify(at):
        return verify_quote(raw, collateral, root_ca_der=root, at=_at(at), platform_policy=POLICY)

    for at in (case["verify_at"], case["window_from"], case["window_to_inclusive"]):
        if case["result"] == "ok":
            result = verify(at)
            assert result.tcb_status == case["status_or_error"]
            assert list(result.advisory_ids) == case["advisory_ids"]
            claims = result.claims()
            assert claims["root_key_id"] == INTEL_ROOT_KEY_ID
            assert claims["collateral_expiration_status"] == "0"
            assert claims["sgx_type"] == "Scalable"
            assert claims["is_dynamic_platform"] is True
        else:
            with pytest.raises(EvidenceInvalidError, match="no matching tcb level"):
                verify(at)
    with pytest.raises(EvidenceInvalidError, match="expired"):
        verify(case["window_to_inclusive"] + 1)


def test_real_quote_supplemental_claims(shared_dir):
    case = _cases(shared_dir)[0]
    tdx = shared_dir / "testdata/tdx"
    raw = (tdx / case["quote"]).read_bytes()
    collateral = Collateral.from_qvl_json((tdx / case["collateral"]).read_text())
    claims = verify_quote(
        raw,
        collateral,
        root_ca_der=intel_root_ca_der(),
        at=_at(case["verify_at"]),
        platform_policy=POLICY,
    ).claims()
    assert claims == {
        "advisory_ids": [],
        "collateral_expiration_status": "0",
        "earliest_expiration_date": "2025-07-19T10:00:35Z",
        "earliest_issue_date": "2018-05-21T10:45:10Z",
        "is_cached_keys": True,
        "is_dynamic_platform": True,
        "is_smt_enabled": True,
        "latest_issue_date": "2025-06-19T10:32:27Z",
        "pck_crl_num": 1,
        "platform_provider_id": "811dca2a26b952e85bb6448b097ba4fd",
        "root_ca_crl_num": 1,
        "root_key_id": INTEL_ROOT_KEY_ID,
        "sgx_type": "Scalable",
        "tcb_date": "2024-03-13T00:00:00Z",
        "tcb_eval_num": 17,
        "tcb_status": "UpToDate",
    }


def test_wrong_root_rejects_real_quote(shared_dir, pki):
    case = _cases(shared_dir)[0]
    tdx = shared_dir / "testdata/tdx"
    raw = (tdx / case["quote"]).read_bytes()
    collateral = Collateral.from_qvl_json((tdx / case["collateral"]).read_text())
    with pytest.raises(EvidenceInvalidError):
        verify_quote(
            raw,
            collateral,
            root_ca_der=pki.root_der,
            at=_at(case["verify_at"]),
            platform_policy=POLICY,
        )
    with pytest.raises(CollateralError, match="trusted root"):
        collateral.check_signatures(pki.root_der)


# ---------------------------------------------------------------- private PKI


@pytest.fixture(scope="module")
def pki():
    return TestPki.create()


def _verify(pki, quote, collateral=None, **kwargs):
    return verify_quote(
        quote,
        collateral or pki.collateral(),
        root_ca_der=pki.root_der,
        at=kwargs.pop("at", AT),
        platform_policy=kwargs.pop("platform_policy", POLICY),
    )


@pytest.mark.parametrize(("version", "body_type"), [(4, 2), (5, 2), (5, 3), (5, 4)])
def test_private_pki_layouts(pki, version, body_type):
    result = _verify(pki, pki.quote(version=version, body_type=body_type))
    assert result.tcb_status == "UpToDate"
    assert result.supplemental["tcb_date"] == "2025-06-01T00:00:00Z"
    assert result.supplemental["root_key_id"] == root_key_id(pki.root_der)


def test_out_of_date_and_relaunch(pki):
    low = bytes([2, 0, 3] + [0] * 13)
    high = bytes([3, 0, 3] + [0] * 13)
    result = _verify(pki, pki.quote(tee_tcb_svn=low))
    assert (result.tcb_status, result.advisory_ids) == (
        "OutOfDate",
        ("INTEL-SA-00960", "INTEL-SA-00982"),
    )
    result = _verify(pki, pki.quote(version=5, body_type=3, tee_tcb_svn=low, tee_tcb_svn2=high))
    assert result.tcb_status == "TDRelaunchAdvised"


@pytest.mark.parametrize(
    "status",
    [
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDateConfigurationNeeded",
    ],
)
def test_non_terminal_statuses_are_claims(pki, status):
    levels = (TcbLevel((2,) * 16, 11, (3, 0, 3) + (0,) * 13, status),)
    result = _verify(pki, pki.quote(), pki.collateral(levels=levels))
    assert result.claims()["tcb_status"] == status


def test_revoked_tcb_level_is_terminal(pki):
    levels = (TcbLevel((2,) * 16, 11, (3, 0, 3) + (0,) * 13, "Revoked"),)
    with pytest.raises(EvidenceInvalidError, match="revoked"):
        _verify(pki, pki.quote(), pki.collateral(levels=levels))


def test_revoked_pck_certificate(pki):
    collateral = pki.collateral(revoked=[pki.pck_leaf.serial_number])
    with pytest.raises(EvidenceInvalidError, match="revoked"):
        _verify(pki, pki.quote(), collateral)


def test_no_matching_tcb_level(pki):
    leaf = pki.new_leaf(cpusvn=bytes(16))
    with pytest.raises(EvidenceInvalidError, match="no matching tcb level"):
        _verify(pki, pki.quote(leaf=leaf))


def test_debug_td_and_sept_ve(pki):
    with pytest.raises(EvidenceInvalidError, match="debug td"):
        _verify(pki, pki.quote(td_attributes=SEPT_VE_DISABLE | TD_DEBUG))
    with pytest.raises(EvidenceInvalidError, match="sept_ve_disable"):
        _verify(pki, pki.quote(td_attributes=0))


def test_expired_and_future_collateral(pki):
    collateral = pki.collateral(AT, validity=dt.timedelta(days=30))
    with pytest.raises(EvidenceInvalidError, match="expired"):
        _verify(pki, pki.quote(), collateral, at=AT + dt.timedelta(days=30))
    with pytest.raises(EvidenceInvalidError, match="not yet valid"):
        _verify(pki, pki.quote(), collateral, at=AT - dt.timedelta(days=2))


@pytest.mark.parametrize("where", ["body", "signature", "qe_report"])
def test_bit_flips(pki, where):
    raw = bytearray(pki.quote(report_data=b"\x01" * 64))
    offset = {"body": 48 + 520, "signature": 632 + 4 + 10, "qe_report": 632 + 4 + 134 + 100}[where]
    raw[offset] ^= 0x01
    with pytest.raises(EvidenceInvalidError, match=r"signature|binding|rejected"):
        _verify(pki, bytes(raw))


def test_platform_policy(pki):
    quote = pki.quote()
    for policy, match in [
        (PlatformPolicy(allow_dynamic_platform=False), "dynamic platform"),
        (PlatformPolicy(allow_cached_keys=False), "cached keys"),
        (PlatformPolicy(allow_smt=False), "smt"),
    ]:
        with pytest.raises(EvidenceInvalidError, match=match):
            _verify(pki, quote, platform_policy=policy)
    leaf = pki.new_leaf(flags=(False, False, False))
    strict = PlatformPolicy(allow_dynamic_platform=False, allow_cached_keys=False, allow_smt=False)
    assert _verify(pki, pki.quote(leaf=leaf), platform_policy=strict).tcb_status == "UpToDate"


def test_processor_ca_platform():
    pki = TestPki.create(ca="processor")
    result = _verify(pki, pki.quote())
    claims = result.claims()
    assert claims["sgx_type"] == "Standard"
    assert "is_dynamic_platform" not in claims


def test_wrong_fmspc_collateral(pki):
    other = pki.collateral(fmspc="00A06D080000")
    with pytest.raises(EvidenceInvalidError):
        _verify(pki, pki.quote(), other)


def test_memo_does_not_hide_failures(pki):
    quote = pki.quote()
    collateral = pki.collateral()
    _verify(pki, quote, collateral)  # fills the memo
    with pytest.raises(EvidenceInvalidError, match="expired"):
        _verify(pki, quote, collateral, at=AT + dt.timedelta(days=60))
    bad = bytearray(quote)
    bad[48 + 520] ^= 1
    with pytest.raises(EvidenceInvalidError):
        _verify(pki, bytes(bad), collateral)


def test_naive_time_is_refused(pki):
    with pytest.raises(ValueError, match="timezone"):
        _verify(pki, pki.quote(), at=dt.datetime(2026, 1, 1))  # noqa: DTZ001
