# SPDX-License-Identifier: Apache-2.0
"""The attestation-service API's bodies: both shapes, runtime and init data, error texts."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attestation.base import NOT_PROVIDED
from kbs.as_requests import (
    AsBodyError,
    AsRequestError,
    b64url_decode,
    loads,
    parse_attestation,
    parse_challenge,
    parse_set_policy,
    render_body_error,
    render_request_error,
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


EVIDENCE = b64url(b'{"svn":"1","report_data":""}')


def current(**device: Any) -> dict[str, Any]:
    return {
        "verification_requests": [{"tee": "sample", "evidence": EVIDENCE, **device}],
        "policy_ids": [],
    }


def test_structured_runtime_data_vector_from_the_reference():
    # Upstream's unit-test vector: key order does not matter (RFC 8785).
    call = parse_attestation(
        current(runtime_data={"structured": {"b": 1, "a": "test", "c": {"d": "e"}}})
    )
    (req,) = call.requests
    assert req.report_data.hex() == (
        "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c"
        "4597480a186427c813ca941da78870c3"
    )
    assert req.runtime_data_claims == {"b": 1, "a": "test", "c": {"d": "e"}}
    assert call.policy_ids == ("default",)
    assert call.token_profile is None
    assert call.legacy is False


def test_tng_22_legacy_body_vector():
    body = {
        "tee": "tdx",
        "evidence": EVIDENCE,
        "runtime_data": {"structured": {"rats-rs.raw_runtime_data": b64url(bytes(32))}},
        "init_data": None,
        "runtime_data_hash_algorithm": "sha384",
        "init_data_hash_algorithm": None,
        "policy_ids": ["default"],
    }
    call = parse_attestation(body)
    assert call.legacy is True
    (req,) = call.requests
    assert req.tee == "tdx"
    assert req.report_data.hex() == (
        "1c2c4d90871a4c68e8978db39e5fb524661ae11bf56cc6b10a888ebc7aba68a4"
        "2eb0cbd8a079efe51517c64e529363f6"
    )
    assert req.init_data_hash is NOT_PROVIDED
    assert req.init_data_claims is None


@pytest.mark.parametrize(
    ("name", "size"), [("sha256", 32), ("SHA384", 48), ("Sha512", 64), ("sm3", 32)]
)
def test_hash_algorithms(name, size):
    (req,) = parse_attestation(
        current(runtime_data={"structured": {"x": 1}}, runtime_data_hash_algorithm=name)
    ).requests
    assert len(req.report_data) == size
    assert req.report_data == hashlib.new(name.lower(), b'{"x":1}').digest()


def test_raw_runtime_data_is_used_verbatim_and_never_hashed():
    (req,) = parse_attestation(
        current(runtime_data={"raw": b64url(b"\x01\x02")}, runtime_data_hash_algorithm="sha512")
    ).requests
    assert req.report_data == b"\x01\x02"
    assert req.runtime_data_claims is None


def test_absent_and_null_are_the_same():
    for body in (
        current(),
        current(runtime_data=None, init_data=None, runtime_data_hash_algorithm=None),
    ):
        (req,) = parse_attestation(body).requests
        assert req.report_data is NOT_PROVIDED
        assert req.init_data_hash is NOT_PROVIDED


def test_init_data_forms():
    digest = hashlib.sha384(b"init").digest()
    (req,) = parse_attestation(current(init_data={"init_data_digest": b64url(digest)})).requests
    assert req.init_data_hash == digest
    assert req.init_data_claims is None
    toml = 'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n"cdh.toml" = "a = \\"b\\""\n'
    (req,) = parse_attestation(current(init_data={"init_data_toml": toml})).requests
    assert req.init_data_hash == hashlib.sha384(toml.encode()).digest()
    assert req.init_data_claims == {"cdh.toml": {"a": "b"}}
    legacy = {
        "tee": "sample",
        "evidence": EVIDENCE,
        "policy_ids": [],
        "init_data": {"structured": {"k": "v"}},
    }
    (req,) = parse_attestation(legacy).requests
    assert req.init_data_hash == hashlib.sha384(b'{"k":"v"}').digest()
    assert req.init_data_claims == {"k": "v"}
    (req,) = parse_attestation({**legacy, "init_data": {"raw": b64url(b"dd")}}).requests
    assert req.init_data_hash == b"dd"


def test_tee_names_and_aliases():
    for name, canonical in [
        ("azsnpvtpm", "az-snp-vtpm"),
        ("aztdxvtpm", "az-tdx-vtpm"),
        ("az-tdx-vtpm", "az-tdx-vtpm"),
        ("sev", "sev"),
    ]:
        body = current()
        body["verification_requests"][0]["tee"] = name
        assert parse_attestation(body).requests[0].tee == canonical
    body = current()
    body["verification_requests"][0]["tee"] = "tdx2"
    with pytest.raises(AsRequestError) as info:
        parse_attestation(body)
    assert info.value.causes == ("tee `tdx2 not supported`",)


def test_token_profile_member():
    assert parse_attestation({**current(), "token_type": "Simple"}).token_profile == "simple"
    assert parse_attestation({**current(), "token_type": "ear"}).token_profile == "ear"
    with pytest.raises(AsBodyError, match="unknown variant `jwt`"):
        parse_attestation({**current(), "token_type": "jwt"})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "invalid type: sequence, expected struct AttestationRequest"),
        ({"policy_ids": []}, "missing field `verification_requests`"),
        ({"verification_requests": {}, "policy_ids": []}, "invalid type: map, expected a sequence"),
        (
            {"verification_requests": [{"tee": "sample"}], "policy_ids": []},
            "missing field `evidence`",
        ),
        (
            {"tee": "sample", "evidence": "", "policy_ids": "default"},
            'invalid type: string "default", expected a sequence',
        ),
        ({"tee": "sample", "evidence": ""}, "missing field `policy_ids`"),
        (
            current(runtime_data={"raw": "a", "structured": {}}),
            "invalid length 2, expected map with a single key",
        ),
        (
            current(runtime_data={"digest": "a"}),
            "unknown variant `digest`, expected `raw` or `structured`",
        ),
        (current(runtime_data={"raw": 1}), "invalid type: integer `1`, expected a string"),
        (current(runtime_data=[]), "invalid type: sequence, expected enum RuntimeData"),
        (current(init_data={"init_data_toml": None}), "invalid type: null, expected a string"),
        (
            current(runtime_data_hash_algorithm=True),
            "invalid type: boolean `true`, expected a string",
        ),
    ],
)
def test_structure_errors_are_serde_style(body, message):
    with pytest.raises(AsBodyError) as info:
        parse_attestation(body)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("body", "causes"),
    [
        (current(evidence="a"), ("base64 decode evidence", "Invalid input length.")),
        (
            current(evidence=b64url(b"\xff")),
            ("failed to parse evidence as JSON", "not a JSON document"),
        ),
        (
            current(runtime_data={"raw": "?"}),
            (
                "decode given Runtime Data",
                "base64 decode raw runtime data",
                "Invalid symbol 63, offset 0.",
            ),
        ),
        (
            current(init_data={"init_data_digest": "~"}),
            (
                "decode given Init Data",
                "base64 decode raw init data",
                "Invalid symbol 126, offset 0.",
            ),
        ),
        (
            current(init_data={"init_data_toml": "algorithm = 'md5'"}),
            ("attestation report evaluate", "parse init data", "parse TOML structured data"),
        ),
        (
            current(runtime_data={"structured": {"n": 2**60}}),
            ("attestation report evaluate", "parse runtime data", "parse JSON structured data"),
        ),
        (
            {"verification_requests": [], "policy_ids": []},
            ("attestation report evaluate", "No verification requests provided."),
        ),
        (
            {
                "verification_requests": [current()["verification_requests"][0]] * 17,
                "policy_ids": [],
            },
            ("attestation report evaluate", "too many verification requests (at most 16)"),
        ),
        (
            {**current(), "policy_ids": ["p"] * 17},
            ("attestation report evaluate", "too many policy ids (at most 16)"),
        ),
    ],
)
def test_semantic_errors_carry_the_reference_contexts(body, causes):
    with pytest.raises(AsRequestError) as info:
        parse_attestation(body)
    assert info.value.causes[: len(causes)] == causes


def test_base64_is_lenient_on_input():
    data = bytes(range(256))
    for text in (
        b64url(data),
        base64.urlsafe_b64encode(data).decode(),
        base64.b64encode(data).decode(),
    ):
        assert b64url_decode(text) == data
    with pytest.raises(ValueError, match="Invalid symbol 32, offset 2"):
        b64url_decode("ab cd")


@given(st.text(max_size=40))
def test_b64url_decode_either_decodes_or_raises_value_error(text):
    with contextlib.suppress(ValueError):
        b64url_decode(text)


def test_renderers():
    assert render_request_error(["a", "b"]) == "An internal error occured: \n0: a\n1: b"
    raw = b'{"tee":"x"}'
    assert render_body_error(AsBodyError("missing field `evidence`"), raw) == (
        "Json deserialize error: missing field `evidence` at line 1 column 11"
    )
    with pytest.raises(AsBodyError) as info:
        loads(b'{\n"a": tru}')
    assert render_body_error(info.value, b"").endswith("at line 2 column 6")
    for bad in (b"NaN", b'{"x": Infinity}', b"\xff"):
        with pytest.raises(AsBodyError):
            loads(bad)


def test_challenge_and_policy_bodies():
    assert parse_challenge({"tee": "aztdxvtpm", "tee_params": "{}"}) == ("az-tdx-vtpm", "{}")
    with pytest.raises(AsRequestError) as info:
        parse_challenge({})
    assert info.value.causes == ("Failed to get inner tee",)
    with pytest.raises(AsRequestError) as info:
        parse_challenge({"tee": "tdx"})
    assert info.value.causes == ("Failed to get inner tee_params",)
    with pytest.raises(AsBodyError, match="expected a string"):
        parse_challenge({"tee": "tdx", "tee_params": {}})
    assert parse_set_policy({"type": "rego", "policy_id": "p", "policy": "cA"}) == ("p", "cA")
    with pytest.raises(AsBodyError, match="missing field `policy`"):
        parse_set_policy({"policy_id": "p"})


def test_evidence_is_handed_to_the_verifier_parsed():
    evidence = {"quote": "AAAA", "cc_eventlog": None}
    (req,) = parse_attestation(current(evidence=b64url(json.dumps(evidence).encode()))).requests
    assert req.evidence == evidence
