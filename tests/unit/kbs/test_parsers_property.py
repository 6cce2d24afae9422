# SPDX-License-Identifier: Apache-2.0
"""Property tests for the parsers that see untrusted input before any authentication.

Any input gives a result or our own error, never a foreign exception. Bounded so the
suite stays fast; ``KBS_FUZZ_EXAMPLES`` raises the count for a longer run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kbs.errors import TokenVerifierError
from kbs.jwe import JweError, parse_tee_pubkey
from kbs.protocol import (
    SUPPORTED_VERSIONS,
    ProtocolError,
    parse_attestation,
    parse_auth_request,
    parse_init_data_toml,
)
from kbs.tokens import TokenVerifier
from policy.errors import ReferenceValueError
from policy.reference_values import parse_message

EXAMPLES = int(os.environ.get("KBS_FUZZ_EXAMPLES", "200"))
AT = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


def _jwkish() -> st.SearchStrategy[dict[str, Any]]:
    b64 = st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/", max_size=120
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "kty": st.sampled_from(["EC", "RSA", "OKP", "oct", ""]) | st.text(max_size=4),
            "crv": st.sampled_from(["P-256", "P-384", "P-521", "X25519"]) | st.text(max_size=6),
            "alg": st.sampled_from(
                ["ECDH-ES+A256KW", "RSA-OAEP-256", "RSA1_5", "RSA-OAEP", "none"]
            ),
            "x": b64,
            "y": b64,
            "n": b64,
            "e": b64,
            "k-mod": b64,
            "k-exp": b64,
        },
    )


@settings(max_examples=EXAMPLES, deadline=None)
@given(jwk=_jwkish() | json_values)
def test_tee_pubkey_parser(jwk: Any) -> None:
    with contextlib.suppress(JweError):
        parse_tee_pubkey(jwk)


@settings(max_examples=EXAMPLES, deadline=None)
@given(body=json_values)
def test_auth_request_parser(body: Any) -> None:
    with contextlib.suppress(ProtocolError):
        parse_auth_request(body)


@settings(max_examples=EXAMPLES, deadline=None)
@given(body=json_values, version=st.sampled_from(sorted(SUPPORTED_VERSIONS)))
def test_attestation_parser(body: Any, version: str) -> None:
    with contextlib.suppress(ProtocolError):
        parse_attestation(body, version=version)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    text=st.text(max_size=400)
    | st.builds(
        lambda alg, data: f'version = "0.1.0"\nalgorithm = "{alg}"\n[data]\n{data}',
        st.sampled_from(["sha256", "sha384", "sha512", "md5", ""]),
        st.text(max_size=200),
    )
)
def test_init_data_parser(text: str) -> None:
    with contextlib.suppress(ProtocolError):
        parse_init_data_toml(text)


@settings(max_examples=EXAMPLES, deadline=None)
@given(message=json_values | st.text(max_size=200) | st.binary(max_size=200))
def test_rvps_message_parser(message: Any) -> None:
    with contextlib.suppress(ReferenceValueError):
        parse_message(message, at=AT)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    token=st.text(max_size=300)
    | st.from_regex(
        r"[A-Za-z0-9_-]{0,60}\.[A-Za-z0-9_-]{0,60}\.[A-Za-z0-9_-]{0,60}", fullmatch=True
    )
)
def test_token_verifier(token: str) -> None:
    with contextlib.suppress(TokenVerifierError):
        TokenVerifier(own_keys=[], insecure_header_jwk=True).verify(token, at=AT)
