# SPDX-License-Identifier: Apache-2.0
"""RVPS registration messages: the sample provenance type, expiry, and every rejection."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from policy import ReferenceValueError
from policy.reference_values import (
    MAX_MESSAGE_BYTES,
    MAX_NAME_CHARS,
    MAX_VALUES_PER_MESSAGE,
    parse_message,
    validate_name,
)

AT = dt.datetime(2026, 3, 15, 10, 20, 30, 123456, tzinfo=dt.UTC)


def _message(payload_obj, *, version="0.1.0", type_="sample"):
    payload = base64.b64encode(json.dumps(payload_obj).encode()).decode()
    message = {"type": type_, "payload": payload}
    if version is not None:
        message["version"] = version
    return message


def test_sample_message_as_text():
    values = {
        "mr_td": ["705ee9381b8633a9fbe532b52345e8433343d2868959f57889d84ca377c395b6"],
        "xfam": ["e742060000000000"],
        "tdvfkernel": "a2ccae1e",
        "major_version": 1,
        "snp_smt_enabled": False,
        "nested": {"a": [1, {"b": None}]},
    }
    parsed = parse_message(json.dumps(_message(values)), at=AT)
    assert [rv.name for rv in parsed] == list(values)
    assert {rv.name: rv.value for rv in parsed} == values
    assert all(rv.version == "0.1.0" for rv in parsed)


def test_sample_message_as_dict_and_bytes():
    message = _message({"svn": ["1"]})
    assert parse_message(message, at=AT)[0].value == ["1"]
    assert parse_message(json.dumps(message).encode(), at=AT)[0].name == "svn"


def test_missing_version_defaults_to_0_1_0():
    # Trustee's Message struct defaults an absent version to "0.1.0".
    assert parse_message(_message({"svn": ["1"]}, version=None), at=AT)[0].name == "svn"


def test_empty_payload_object_registers_nothing():
    assert parse_message(_message({}), at=AT) == []


def test_expiration_is_twelve_months_later_to_the_second():
    (rv,) = parse_message(_message({"svn": ["1"]}), at=AT)
    assert rv.expiration == dt.datetime(2027, 3, 15, 10, 20, 30, tzinfo=dt.UTC)


def test_expiration_is_converted_to_utc():
    at = dt.datetime(2026, 1, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    (rv,) = parse_message(_message({"svn": ["1"]}), at=at)
    assert rv.expiration == dt.datetime(2026, 12, 31, 23, 0, tzinfo=dt.UTC)


def test_expiration_clamps_leap_day():
    at = dt.datetime(2028, 2, 29, 12, 0, tzinfo=dt.UTC)
    (rv,) = parse_message(_message({"svn": ["1"]}), at=at)
    assert rv.expiration == dt.datetime(2029, 2, 28, 12, 0, tzinfo=dt.UTC)


def test_naive_time_is_a_programming_error():
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_message(_message({"svn": ["1"]}), at=dt.datetime(2026, 1, 1))  # noqa: DTZ001


@pytest.mark.parametrize("version", ["0.1.1", "0.1", "1.0.0", "", 1, None])
def test_wrong_version(version):
    message = _message({"svn": ["1"]})
    message["version"] = version
    with pytest.raises(ReferenceValueError, match="unsupported message version"):
        parse_message(message, at=AT)


@pytest.mark.parametrize("type_", ["swid", "corim", "Sample", "unknown"])
def test_unsupported_type(type_):
    with pytest.raises(ReferenceValueError, match="unsupported provenance type"):
        parse_message(_message({"svn": ["1"]}, type_=type_), at=AT)


@pytest.mark.parametrize("type_", [None, 1, ["sample"]])
def test_type_must_be_string(type_):
    message = _message({"svn": ["1"]})
    message["type"] = type_
    with pytest.raises(ReferenceValueError, match="type must be a string"):
        parse_message(message, at=AT)


@pytest.mark.parametrize(
    "payload",
    [
        "not base64!",
        "eyJzdm4iOiBbIjEiXX0",  # valid JSON but padding stripped
        "eyJzdm4iOi\nBbIjEiXX0=",  # embedded newline
        "eyJzdm4iOiBbIjEiXX0-",  # URL-safe alphabet
        "é",
    ],
)
def test_bad_base64(payload):
    message = {"version": "0.1.0", "type": "sample", "payload": payload}
    with pytest.raises(ReferenceValueError, match="not standard base64"):
        parse_message(message, at=AT)


@pytest.mark.parametrize("payload", [None, 12, {"svn": ["1"]}])
def test_payload_must_be_string(payload):
    message = {"version": "0.1.0", "type": "sample", "payload": payload}
    with pytest.raises(ReferenceValueError, match="payload must be a string"):
        parse_message(message, at=AT)


@pytest.mark.parametrize(
    "decoded",
    [b'["svn"]', b'"svn"', b"42", b"null", b"{not json", b"\xff\xfe", b'{"a": 1, "a": 2}'],
)
def test_payload_must_decode_to_json_object(decoded):
    message = {"version": "0.1.0", "type": "sample", "payload": base64.b64encode(decoded).decode()}
    with pytest.raises(ReferenceValueError, match="payload is not a json object"):
        parse_message(message, at=AT)


@pytest.mark.parametrize("message", ["[]", "not json", '"text"', b"\xff", 42])
def test_message_must_be_json_object(message):
    with pytest.raises(ReferenceValueError, match="message"):
        parse_message(message, at=AT)


def test_message_size_cap():
    message = json.dumps(_message({"svn": ["1" * MAX_MESSAGE_BYTES]}))
    with pytest.raises(ReferenceValueError, match="larger than"):
        parse_message(message, at=AT)


def test_payload_size_cap_for_decoded_messages():
    message = {"version": "0.1.0", "type": "sample", "payload": "A" * (MAX_MESSAGE_BYTES + 4)}
    with pytest.raises(ReferenceValueError, match="larger than"):
        parse_message(message, at=AT)


def test_value_count_cap():
    values = {f"rv{i}": [i] for i in range(MAX_VALUES_PER_MESSAGE + 1)}
    with pytest.raises(ReferenceValueError, match="more than"):
        parse_message(_message(values), at=AT)


@pytest.mark.parametrize(
    "name",
    ["", " ", "has space", "tab\t", "new\nline", "é", "x" * (MAX_NAME_CHARS + 1), "\x00"],
)
def test_bad_names_are_rejected(name):
    with pytest.raises(ReferenceValueError, match="reference value name"):
        parse_message(_message({name: [1]}), at=AT)


@pytest.mark.parametrize(
    "name", ["mr_td", "snp_launch_measurement", "az-tdx.pcr11", "a", "x" * MAX_NAME_CHARS]
)
def test_good_names(name):
    assert validate_name(name) == name


def test_validate_name_rejects_non_strings():
    with pytest.raises(ReferenceValueError, match="non-empty string"):
        validate_name(7)
