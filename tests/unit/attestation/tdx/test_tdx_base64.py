# SPDX-License-Identifier: Apache-2.0
"""The event-log base64 fast path answers exactly what the strict stdlib decoder answers."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.tdx.verifier import a2b_base64_strict

SHARED = Path(__file__).resolve().parents[4].parent / "shared"
RUN = 256 * 3  # bytes in the shortest run the fast path expands

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _reference(text: str) -> bytes | type[Exception]:
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        return type(exc)


def _ours(text: str) -> bytes | type[Exception]:
    try:
        return a2b_base64_strict(text)
    except (binascii.Error, ValueError) as exc:
        return type(exc)


def test_real_ccel_table_with_zero_and_ff_fill() -> None:
    raw = (SHARED / "testdata/trustee/CCEL_data").read_bytes()
    events = raw.rstrip(b"\x00")
    for table in (raw, events + b"\xff" * (1 << 20), events + b"\x00" * (1 << 20) + b"\x01"):
        text = base64.b64encode(table).decode()
        assert a2b_base64_strict(text) == table


@pytest.mark.parametrize(
    "text",
    [
        "",
        "AAAA",
        "=" * 4096,
        "QQ==" + "A" * 4096,  # padding before the run
        "A" * 4095,  # not a multiple of 4
        "A" * 4094 + "==",
        "A" * 4096 + "A===",
        "A" * 4096 + "=AAA",
        "QUJD" + "A" * 4096 + "é" * 4,  # non-ASCII tail
        "Q!JD" + "A" * 4096 + "AA==",  # bad character before the run
        " " * 4 + "A" * 4096,
    ],
)
def test_edge_cases_match_the_strict_decoder(text: str) -> None:
    assert _ours(text) == _reference(text)


@PROPERTY
@given(
    head=st.binary(max_size=64),
    fill=st.sampled_from([b"\x00", b"\xff", b"\x00\x00\x01", b"A"]),
    repeat=st.integers(min_value=0, max_value=RUN // 3 + 64),
    tail=st.binary(max_size=5),
    edit=st.none() | st.tuples(st.integers(min_value=0), st.sampled_from("=A/+-_ \n\x00é")),
)
def test_any_padded_log_matches_the_strict_decoder(
    head: bytes, fill: bytes, repeat: int, tail: bytes, edit: tuple[int, str] | None
) -> None:
    text = base64.b64encode(head + fill * (repeat * 3) + tail).decode()
    if edit is not None and text:
        at, char = edit
        at %= len(text)
        text = text[:at] + char + text[at + 1 :]
    assert _ours(text) == _reference(text)
