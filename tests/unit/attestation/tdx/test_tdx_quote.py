# SPDX-License-Identifier: Apache-2.0
"""The pure quote parser against real quotes and the reference's claim vector."""

from __future__ import annotations

import json
import struct

import pytest

from attestation.errors import EvidenceInvalidError
from attestation.tdx.errors import QuoteParseError
from attestation.tdx.eventlog import parse_event_log
from attestation.tdx.pck import parse_pck_chain
from attestation.tdx.quote import BodyType, parse_quote, quote_claims, td_attributes_claims


@pytest.fixture(scope="module")
def expected(shared_dir):
    return json.loads((shared_dir / "testdata/tdx/expected.json").read_text())


def _quote_bytes(shared_dir, name):
    return (shared_dir / "testdata/tdx" / name).read_bytes()


def test_reference_claims_vector(shared_dir):
    """quote_4 + CCEL_data give exactly the reference verifier's parsed claims."""
    trustee = shared_dir / "testdata/trustee"
    want = json.loads((trustee / "verifier-parse_tdx_claims_expected.json").read_text())
    quote = parse_quote((trustee / "verifier-tdx_quote_4.dat").read_bytes())
    log = parse_event_log((trustee / "CCEL_data").read_bytes())
    pck = parse_pck_chain(quote.signature_data.pck_chain_pem)
    got = {
        "quote": quote_claims(quote),
        "td_attributes": td_attributes_claims(quote.report.td_attributes),
        "report_data": quote.report.report_data.hex(),
        "init_data": quote.report.mr_config_id.hex(),
        "uefi_event_logs": log.to_claims(),
        "platform_instance_id": pck.platform_instance_id.hex(),
    }
    assert got == want


def test_v5_td15_claims(shared_dir):
    quote = parse_quote((shared_dir / "testdata/trustee/verifier-tdx_quote_5.dat").read_bytes())
    claims = quote_claims(quote)
    assert claims["header"]["version"] == "0500"
    assert claims["type"] == "0300"
    assert claims["size"] == "88020000"
    assert set(claims["body"]) >= {"tee_tcb_svn2", "mr_servicetd", "rtmr_3"}
    assert "td_id" not in claims["body"]


@pytest.mark.parametrize("index", range(6))
def test_real_quotes_match_measured_fields(shared_dir, expected, index):
    case = expected[index]
    raw = _quote_bytes(shared_dir, case["quote"])
    quote = parse_quote(raw)
    assert quote.version == case["quote_version"]
    report = quote.report
    m = case["measurements"]
    assert report.mr_td.hex() == m["mr_td"]
    assert [r.hex() for r in report.rtmrs] == [m[f"rt_mr{i}"] for i in range(4)]
    assert report.report_data.hex() == m["report_data"]
    assert report.mr_config_id.hex() == m["mr_config_id"]
    assert report.td_attributes.hex() == m["td_attributes"]
    assert report.tee_tcb_svn.hex() == m["tee_tcb_svn"]
    assert report.mr_signer_seam.hex() == m["mr_signer_seam"]
    if "tee_tcb_svn2" in m:
        assert report.tee_tcb_svn2.hex() == m["tee_tcb_svn2"]
        assert report.mr_servicetd.hex() == m["mr_service_td"]
    if "td_id" in m:
        assert report.td_id.hex() == m["td_id"]
        assert quote.body_type is BodyType.TD_REPORT_15_EX
        assert quote_claims(quote)["type"] == "0400"
    pck = parse_pck_chain(quote.signature_data.pck_chain_pem)
    assert pck.fmspc == case["fmspc"]
    assert pck.ca == case["pck_ca"]
    # Padding after the signature data is tolerated and not consumed.
    assert quote.length <= len(raw)


def test_padding_after_signature_is_ignored(shared_dir, expected):
    raw = _quote_bytes(shared_dir, expected[0]["quote"])
    a = parse_quote(raw)
    b = parse_quote(raw[: a.length])
    c = parse_quote(raw[: a.length] + b"\x00" * 1000)
    assert a == b == c


def test_every_truncation_is_our_error(shared_dir, expected):
    raw = _quote_bytes(shared_dir, expected[2]["quote"])
    full = parse_quote(raw).length
    for cut in range(full):
        with pytest.raises(QuoteParseError):
            parse_quote(raw[:cut])


def _patched(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(raw)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "match"),
    [
        (0, "<H", 3, "unsupported tdx quote version 3"),
        (0, "<H", 6, "unsupported tdx quote version"),
        (2, "<H", 3, "attestation key type"),
        (4, "<I", 0, "is not tdx"),
        (48, "<H", 1, "body type 1"),
        (48, "<H", 9, "body type 9"),
        (50, "<I", 584, "body size 584"),
    ],
)
def test_header_and_descriptor_checks(shared_dir, expected, offset, fmt, value, match):  # noqa: PLR0917
    raw = _quote_bytes(shared_dir, expected[2]["quote"])  # v5 TD 1.5
    with pytest.raises(QuoteParseError, match=match):
        parse_quote(_patched(raw, offset, fmt, value))


def test_sgx_v3_quote_is_named(shared_dir, expected):
    raw = _quote_bytes(shared_dir, expected[0]["quote"])
    raw = _patched(_patched(raw, 0, "<H", 3), 4, "<I", 0)
    with pytest.raises(QuoteParseError, match="sgx quote"):
        parse_quote(raw)


def test_inconsistent_nested_sizes(shared_dir, expected):
    raw = _quote_bytes(shared_dir, expected[0]["quote"])  # v4
    sig_len = struct.unpack_from("<I", raw, 632)[0]
    cert_size = struct.unpack_from("<I", raw, 636 + 130)[0]
    with pytest.raises(QuoteParseError, match="certification data size"):
        parse_quote(_patched(raw, 636 + 130, "<I", cert_size - 1))
    with pytest.raises(QuoteParseError):
        parse_quote(_patched(raw, 632, "<I", sig_len + 1))
    with pytest.raises(QuoteParseError, match="certification data type"):
        parse_quote(_patched(raw, 636 + 128, "<H", 5))
    chain_type_off = 636 + 134 + 384 + 64 + 2 + 32
    with pytest.raises(QuoteParseError, match="inner certification data type"):
        parse_quote(_patched(raw, chain_type_off, "<H", 3))


def test_size_cap():
    with pytest.raises(QuoteParseError, match="too large"):
        parse_quote(b"\x04" * (64 * 1024 + 1))


def test_parse_errors_are_evidence_errors():
    assert issubclass(QuoteParseError, EvidenceInvalidError)


def test_td_attributes_bits():
    value = (1 << 0) | (1 << 28) | (1 << 63)
    assert td_attributes_claims(value.to_bytes(8, "little")) == {
        "debug": True,
        "septve_disable": True,
        "protection_keys": False,
        "key_locker": False,
        "perfmon": True,
    }
