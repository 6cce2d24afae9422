# SPDX-License-Identifier: Apache-2.0
"""The audit chain's hash input is byte for byte what it was with the standard library.

Records written before kbs/jsoncodec.py were hashed over ``json.dumps(..., sort_keys=True,
separators=(",", ":"), ensure_ascii=False)``; verify_chain recomputes those hashes, so
the codec must give the same bytes for every value a record's columns can hold.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kbs.audit import _canonical, record_hash

# Text as a column can hold it: any code point but lone surrogates (not UTF-8 at all).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
OPTIONAL = st.none() | TEXT


def _stdlib(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@settings(max_examples=300, deadline=None)
@given(
    seq=st.integers(0, 2**63 - 1),
    at_ms=st.integers(0, 2**63 - 1),
    kind=TEXT,
    action=TEXT,
    outcome=TEXT,
    actor=OPTIONAL,
    client=OPTIONAL,
    request_id=OPTIONAL,
    resource=OPTIONAL,
    detail_text=TEXT,
    prev_hash=TEXT,
)
def test_record_hash_is_the_standard_librarys(**columns: Any) -> None:
    order = ["seq", "at_ms", "kind", "action", "outcome", "actor", "client"]
    order += ["request_id", "resource", "detail_text", "prev_hash"]
    expected = hashlib.sha256(_stdlib(["kbs-audit-v1", *(columns[k] for k in order)]))
    assert record_hash(**columns) == expected.hexdigest()


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(TEXT, JSONISH, max_size=5))
def test_detail_text_is_the_standard_librarys(detail: dict[str, Any]) -> None:
    assert _canonical(detail) == _stdlib(detail)


#: record_hash of the record below, computed with the standard-library encoding (966d43f).
KNOWN = "2bd4f322cfe853de370b501bc0c6dceb6d88041bbe671742ef7dd40bb69b7ed8"


def test_a_known_record_hash() -> None:
    """A hash computed before the codec, with every kind of column."""
    got = record_hash(
        seq=7,
        at_ms=1_795_357_301_704,
        kind="release",
        action="release",
        outcome="allowed",
        actor=None,
        client="10.0.0.1",
        request_id="req-\u00e9\n\u2028",
        resource="cai/key/model",
        detail_text='{"token_id":"ab","version":3}',
        prev_hash="0" * 64,
    )
    assert got == KNOWN
