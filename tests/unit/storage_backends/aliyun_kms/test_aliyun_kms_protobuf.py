# SPDX-License-Identifier: Apache-2.0
"""The hand-written protobuf codec against vectors recorded from the dkms-gcs SDK."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage_backends.aliyun_kms import _protobuf as pb

# Research notes 2.4, recorded from alibabacloud-dkms-gcs 1.0.2 (protobuf api_pb2).
REQUEST_HEX = "0a05706c61696e120a41435343757272656e741a0276312001"
RESPONSE_HEX = "0a016b1a0568656c6c6f220474657874"
MODEL_KEY_BODY_HEX = "0a146d6f64656c2d64656372797074696f6e2d6b6579"
MODEL_KEY_SHA256 = "259CE1DE0CD714FFA66AC94926D2A042D2BD3E9D900FF08E51AA96E3BF7839BE"


def test_encode_get_secret_value_request_matches_sdk():
    encoded = pb.encode([(1, "plain"), (2, "ACSCurrent"), (3, "v1"), (4, True)])
    assert encoded.hex() == REQUEST_HEX


def test_encode_skips_proto3_defaults():
    assert pb.encode([(1, "model-decryption-key"), (2, ""), (3, None), (4, False)]).hex() == (
        MODEL_KEY_BODY_HEX
    )
    assert hashlib.sha256(bytes.fromhex(MODEL_KEY_BODY_HEX)).hexdigest().upper() == MODEL_KEY_SHA256


def test_decode_response_matches_sdk():
    fields = pb.decode(bytes.fromhex(RESPONSE_HEX))
    assert pb.get_str(fields, 1) == "k"
    assert pb.get_str(fields, 3) == "hello"
    assert pb.get_str(fields, 4) == "text"
    assert pb.get_str(fields, 2) == ""


def test_decode_error_message():
    body = (
        b"\x08\x94\x03"
        b"\x12\x1a"
        b"Forbidden.ResourceNotFound"
        b"\x1a\x1d"
        b"The resource cannot be found."
        b"\x22\x03rid"
    )
    fields = pb.decode(body)
    assert pb.get_int(fields, 1) == 404
    assert pb.get_str(fields, 2) == "Forbidden.ResourceNotFound"
    assert pb.get_str(fields, 4) == "rid"


def test_negative_int32_round_trip():
    assert pb.get_int(pb.decode(pb.encode([(1, -5)])), 1) == -5


def test_repeated_strings_and_unknown_fixed_fields_are_skipped():
    body = (
        pb.encode([(5, "ACSCurrent"), (5, "ACSPrevious")]) + b"\x39" + bytes(8) + b"\x45" + bytes(4)
    )
    fields = pb.decode(body)
    assert pb.get_strs(fields, 5) == ["ACSCurrent", "ACSPrevious"]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x0a\x05abc", "truncated length-delimited"),
        (b"\x08", "truncated varint"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "varint too long"),
        (b"\x0b", "unsupported wire type"),
        (b"\x02\x00", "field number 0"),
        (b"\x39\x00", "truncated fixed-width"),
    ],
)
def test_malformed_input_is_rejected(data: bytes, match: str):
    with pytest.raises(pb.ProtobufError, match=match):
        pb.decode(data)


def test_string_field_type_errors():
    with pytest.raises(pb.ProtobufError, match="not length-delimited"):
        pb.get_str(pb.decode(b"\x08\x01"), 1)
    with pytest.raises(pb.ProtobufError, match="not UTF-8"):
        pb.get_str(pb.decode(b"\x0a\x01\xff"), 1)
    with pytest.raises(pb.ProtobufError, match="not a varint"):
        pb.get_int(pb.decode(b"\x0a\x01a"), 1)


@given(st.binary(max_size=256))
def test_decode_never_raises_anything_but_protobuf_error(data: bytes):
    try:
        fields = pb.decode(data)
    except pb.ProtobufError:
        return
    for number in fields:
        with contextlib.suppress(pb.ProtobufError):
            pb.get_str(fields, number)


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=2**29 - 1),
            st.one_of(st.text(), st.binary(), st.booleans(), st.integers(-(2**63), 2**63 - 1)),
        ),
        max_size=8,
    )
)
def test_encode_decode_round_trip(pairs: list[tuple[int, object]]):
    encoded = pb.encode(pairs)  # type: ignore[arg-type]
    decoded = pb.decode(encoded)
    for number, value in pairs:
        if value in ("", b"", False, 0):
            continue
        values = decoded[number]
        if isinstance(value, str):
            assert value.encode() in values
        elif isinstance(value, bytes):
            assert value in values
        else:
            assert any(
                isinstance(v, int) and (v == int(value) or v - 2**64 == int(value)) for v in values
            )
