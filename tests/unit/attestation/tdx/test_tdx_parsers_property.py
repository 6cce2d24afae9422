# SPDX-License-Identifier: Apache-2.0
"""Property tests: any bytes give a parse result or our own error, never a foreign one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.errors import EvidenceInvalidError
from attestation.tdx import pck
from attestation.tdx.errors import EventLogParseError, PckChainError, QuoteParseError
from attestation.tdx.quote import parse_quote
from support.parsers import event_log_ok_or_ours

SHARED = Path(__file__).resolve().parents[4].parent / "shared"
QUOTE_V4 = (SHARED / "testdata/tdx/q1_dcapqvl_tdx_quote_v4.bin").read_bytes()
QUOTE_V5 = (SHARED / "testdata/tdx/q2_dcapqvl_tdx_quote_td15ex_v5.bin").read_bytes()
EVENTLOG = (SHARED / "testdata/trustee/eventlog-CCEL_AAEL_alibabacloud").read_bytes()
EVENTLOG = EVENTLOG[: EVENTLOG.index(b"\xff" * 8)]

#: Raise with TDX_FUZZ_EXAMPLES=20000 for a longer campaign.
FUZZ = settings(
    max_examples=int(os.environ.get("TDX_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def mutated(draw, seed: bytes):
    """A real input with a few byte edits, a truncation or an insertion."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    kind = draw(st.sampled_from(["none", "truncate", "insert", "u32"]))
    if kind == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif kind == "insert":
        pos = draw(st.integers(0, len(data)))
        data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "u32" and len(data) >= 4:
        # Length fields are the interesting part: write a random u32 somewhere.
        pos = draw(st.integers(0, len(data) - 4))
        data[pos : pos + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
    return bytes(data)


def _quote_ok_or_ours(data: bytes) -> None:
    with contextlib.suppress(QuoteParseError):
        parse_quote(data)


@FUZZ
@given(st.binary(max_size=2048))
def test_quote_parser_random_bytes(data):
    _quote_ok_or_ours(data)


@FUZZ
@given(st.one_of(mutated(QUOTE_V4), mutated(QUOTE_V5)))
def test_quote_parser_mutated_quotes(data):
    _quote_ok_or_ours(data)


@FUZZ
@given(st.binary(max_size=2048))
def test_eventlog_parser_random_bytes(data):
    event_log_ok_or_ours(data)


@FUZZ
@given(mutated(EVENTLOG))
def test_eventlog_parser_mutated_logs(data):
    event_log_ok_or_ours(data)


@FUZZ
@given(st.binary(max_size=512))
def test_sgx_extension_walker(data):
    with contextlib.suppress(PckChainError):
        pck._collect(pck._Der(), data, {})


@FUZZ
@given(st.binary(max_size=4096))
def test_pck_chain_parser(data):
    with contextlib.suppress(PckChainError):
        pck.parse_pck_chain(data)


def test_our_errors_are_evidence_errors():
    for error in (QuoteParseError, EventLogParseError, PckChainError):
        assert issubclass(error, EvidenceInvalidError)
