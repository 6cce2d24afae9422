# SPDX-License-Identifier: Apache-2.0
"""Property tests for the remaining parsers of request input.

Path patterns (admin grants, release policies, listing filters), the attestation
service's bodies (unauthenticated, like the KBS's), and release-policy allow lists: any
input gives a result or the error the route turns into its answer, never a foreign
exception. test_parsers_property.py covers the KBS guest protocol. ``KBS_FUZZ_EXAMPLES``
raises the count (tools/fuzz_parsers.py does).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kbs.as_requests import (
    AsBodyError,
    AsRequestError,
    loads,
    parse_attestation,
    parse_challenge,
    parse_set_policy,
)
from kbs.errors import ReleasePolicyError
from kbs.protocol import ProtocolError, parse_init_data_toml
from kbs.release_policies import compile_allow_list, normalise_allow_list
from kbs.scopes import PathPattern
from storage_backends import ResourceDesc

EXAMPLES = int(os.environ.get("KBS_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
_TRICKY = st.sampled_from(["/", "*", ".", "..", "\x00", "\\", "a", "b-c", "_", "é", "", " "])
_PATTERNS = st.one_of(
    st.text(max_size=30),
    st.lists(_TRICKY, max_size=10).map("".join),
)


@FUZZ
@given(text=_PATTERNS)
def test_path_patterns(text: str) -> None:
    try:
        pattern = PathPattern.parse(text)
    except ValueError:
        return
    # Accepted: three segments, each "*" or a valid resource path segment (no traversal).
    assert len(pattern.segments) == 3
    for segment in pattern.segments:
        assert segment == "*" or ResourceDesc("a", "b", segment).tag == segment
        assert "/" not in segment
        assert "\x00" not in segment
        assert segment not in (".", "..")
    # Its text form parses back to the same pattern.
    assert PathPattern.parse(str(pattern)) == pattern


_B64 = st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="))
_DEVICE = st.fixed_dictionaries(
    {},
    optional={
        "tee": st.sampled_from(["sample", "tdx", "snp", "", "TDX"]) | st.text(max_size=6),
        "evidence": _B64 | st.text(max_size=20) | json_values,
        "runtime_data": st.fixed_dictionaries({}, optional={"raw": _B64, "structured": json_values})
        | json_values,
        "init_data": st.fixed_dictionaries(
            {},
            optional={"init_data_digest": _B64, "init_data_toml": st.text(max_size=60)},
        )
        | json_values,
        "runtime_data_hash_algorithm": st.sampled_from(["sha256", "sha384", "sha512", "md5"]),
        "init_data_hash_algorithm": st.sampled_from(["sha256", "sha384", "sha512", "md5"]),
    },
)
_AS_ATTESTATION = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "verification_requests": st.lists(_DEVICE, max_size=3) | json_values,
            "policy_ids": st.lists(st.text(max_size=8), max_size=3) | json_values,
        },
        optional={"token_type": st.sampled_from(["ear", "simple", "x"]) | json_values},
    ),
    # The legacy single-device form: the device's members at the top level.
    st.builds(
        lambda device, ids: {**device, "policy_ids": ids},
        _DEVICE,
        st.lists(st.text(max_size=8), max_size=3),
    ),
)


@FUZZ
@given(body=_AS_ATTESTATION)
def test_as_attestation_body(body: Any) -> None:
    with contextlib.suppress(AsBodyError, AsRequestError):
        call = parse_attestation(body)
        assert call.requests


@FUZZ
@given(
    raw=st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    # Deep nesting within any size limit (RecursionError in the parser, once a 500).
    | st.builds(lambda n, o: o * n, st.integers(1, 100_000), st.sampled_from([b"[", b'{"a":']))
)
def test_as_json_loader(raw: bytes) -> None:
    with contextlib.suppress(AsBodyError):
        loads(raw)


@FUZZ
@given(body=json_values | st.dictionaries(st.sampled_from(["tee", "tee_params"]), json_values))
def test_as_challenge_and_policy_bodies(body: Any) -> None:
    with contextlib.suppress(AsBodyError, AsRequestError):
        parse_challenge(body)
    with contextlib.suppress(AsBodyError):
        parse_set_policy(body)


_ALLOW_LIST = st.one_of(
    json_values,
    st.dictionaries(
        st.sampled_from(["mr_td", "rtmr_0", "rtmr_1", "rtmr_2", "rtmr_3", "tcb_status", "x"]),
        st.lists(
            st.text(alphabet="0123456789abcdefABCDEF", max_size=100)
            | st.sampled_from(["UpToDate", "OutOfDate", ""]),
            max_size=3,
        )
        | json_values,
        max_size=4,
    ),
)


@FUZZ
@given(raw=_ALLOW_LIST)
def test_release_policy_allow_lists(raw: Any) -> None:
    try:
        allow = normalise_allow_list(raw)
    except ReleasePolicyError:
        return
    assert allow
    # An accepted allow list compiles to Rego (the route then validates it with regorus).
    assert "package" in compile_allow_list(allow)


_TOML_OPENERS = st.sampled_from(["[", "{a=", "[{a=", '"""'])


@FUZZ
@given(
    key=st.sampled_from(["x", '"cdh.toml"', '"aa.toml"', '"policy.rego"']),
    opener=_TOML_OPENERS,
    depth=st.integers(1, 20_000),
    close=st.booleans(),
)
def test_init_data_toml_nesting(key: str, opener: str, depth: int, close: bool) -> None:
    closer = {"[": "]", "{a=": "1}", "[{a=": "1}]", '"""': '"""'}[opener]
    value = opener * depth + (closer * depth if close else "")
    body = f'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n{key} = {value}\n'
    with contextlib.suppress(ProtocolError):
        parse_init_data_toml(body)
