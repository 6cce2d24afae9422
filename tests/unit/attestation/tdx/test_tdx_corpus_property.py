# SPDX-License-Identifier: Apache-2.0
"""Property tests over the whole real corpus: every quote and CCEL log of ../shared, mutated.

test_tdx_parsers_property.py mutates one v4 and one v5 quote and one event log; this file
mutates all of them (six quotes from four producers, the two Trustee verifier quotes, the
three CCEL logs) and holds the parsers to the package contract: a result, or an error of
ours (a subclass of ``AttestationError``), never a foreign exception. A parsed quote or
log is also used (claims, replay), since that is where a bad length can surface.

``TDX_FUZZ_EXAMPLES`` raises the count (tools/fuzz_parsers.py does).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.errors import AttestationError
from attestation.tdx.errors import EventLogParseError, QuoteParseError
from attestation.tdx.eventlog import parse_event_log
from attestation.tdx.quote import parse_quote
from support.parsers import event_log_ok_or_ours

SHARED = Path(__file__).resolve().parents[4].parent / "shared"
QUOTES = {
    path.name: path.read_bytes()
    for path in sorted((SHARED / "testdata/tdx").glob("*.bin"))
    + sorted((SHARED / "testdata/trustee").glob("verifier-tdx_quote_*.dat"))
}
_PADDING = b"\xff" * 8


def _trimmed(data: bytes) -> bytes:
    # CCEL areas are padded with 0xff to their reserved size (1 MiB for CCEL_data): the
    # events and a little padding are the interesting part.
    end = data.find(_PADDING)
    return data if end < 0 else data[: end + 64]


EVENT_LOGS = {
    name: _trimmed((SHARED / "testdata/trustee" / name).read_bytes())
    for name in ("CCEL_data", "eventlog-CCEL_data_ovmf", "eventlog-CCEL_AAEL_alibabacloud")
}

FUZZ = settings(
    max_examples=int(os.environ.get("TDX_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def mutated(draw: st.DrawFn, corpus: dict[str, bytes]) -> bytes:
    """One corpus input with byte edits, a length field overwritten, a cut or a splice."""
    data = bytearray(corpus[draw(st.sampled_from(sorted(corpus)))])
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    kind = draw(st.sampled_from(["none", "truncate", "insert", "delete", "u16", "u32", "splice"]))
    if kind == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif kind == "insert":
        pos = draw(st.integers(0, len(data)))
        data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
    elif kind == "delete":
        pos = draw(st.integers(0, len(data) - 1))
        del data[pos : pos + draw(st.integers(1, 64))]
    elif kind in ("u16", "u32"):
        # Length and count fields: extremes and off-by-ones are the interesting values.
        size = 2 if kind == "u16" else 4
        pos = draw(st.integers(0, max(0, len(data) - size)))
        value = draw(
            st.sampled_from([0, 1, 2 ** (8 * size) - 1, 2 ** (8 * size - 1)])
            | st.integers(0, 2 ** (8 * size) - 1)
        )
        data[pos : pos + size] = value.to_bytes(size, "little")
    elif kind == "splice":
        # The head of one input and the tail of another (a v4 header on a v5 body...).
        other = corpus[draw(st.sampled_from(sorted(corpus)))]
        cut = draw(st.integers(0, min(len(data), len(other))))
        data = data[:cut] + other[cut:]
    return bytes(data)


def test_the_corpus_parses() -> None:
    assert len(QUOTES) == 8
    for name, data in QUOTES.items():
        assert parse_quote(data).header.version in (4, 5), name
    for name, data in EVENT_LOGS.items():
        assert parse_event_log(data).entries, name


@FUZZ
@given(data=mutated(QUOTES))
def test_mutated_quotes(data: bytes) -> None:
    with contextlib.suppress(QuoteParseError):
        quote = parse_quote(data)
        # Parsed means every field is in range: the claims can be built from it.
        assert quote.header.version in (4, 5)


@FUZZ
@given(data=mutated(EVENT_LOGS))
def test_mutated_event_logs(data: bytes) -> None:
    event_log_ok_or_ours(data)


@pytest.mark.parametrize("error", [QuoteParseError, EventLogParseError])
def test_parser_errors_are_the_package_errors(error: type[Exception]) -> None:
    assert issubclass(error, AttestationError)
