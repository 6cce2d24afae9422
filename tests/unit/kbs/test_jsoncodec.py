# SPDX-License-Identifier: Apache-2.0
"""kbs.jsoncodec agrees with the standard library, whichever library does the work."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kbs import jsoncodec

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def _stdlib(data: Any) -> tuple[str, Any]:
    """What json.loads gives, with NaN and the infinities refused."""
    try:
        return "ok", json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        return "error", type(exc)


def _ours(data: Any) -> tuple[str, Any]:
    try:
        return "ok", jsoncodec.loads(data)
    except (ValueError, RecursionError) as exc:
        return "error", type(exc)


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal JSON types (1 and 1.0 and True differ here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


@settings(max_examples=400)
@given(JSON_VALUES)
def test_round_trip_matches_the_standard_library(value: Any) -> None:
    encoded = jsoncodec.dumps(value)
    assert _same(json.loads(encoded), value)
    assert _same(jsoncodec.loads(encoded), value)
    assert _same(jsoncodec.loads(encoded.decode()), value)


NO_FLOATS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400)
@given(NO_FLOATS)
def test_sorted_output_is_the_standard_librarys_bytes(value: Any) -> None:
    # kbs/jwe.py writes the JWE protected header (strings only) this way: its bytes are on
    # the wire. Floats are written differently (1e-7, not 1e-07).
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    assert jsoncodec.dumps(value, sort_keys=True) == expected.encode("utf-8", "surrogatepass")


@settings(max_examples=400)
@given(JSON_VALUES)
def test_standard_library_text_parses_the_same(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
        assert _same(jsoncodec.loads(text), json.loads(text))
        assert _same(jsoncodec.loads(text.encode()), json.loads(text))


JSONISH_TEXT = st.text(
    alphabet='{}[]":,.-+eE0123456789 \\/tfnrulasINfiy\ud800\ufeffé\n', max_size=40
)


@settings(max_examples=1000)
@given(JSONISH_TEXT | st.binary(max_size=40))
def test_arbitrary_text_is_accepted_or_refused_alike(data: str | bytes) -> None:
    if isinstance(data, str):
        try:
            data.encode()
        except UnicodeEncodeError:
            ours, theirs = _ours(data), _stdlib(data)
            assert ours[0] == theirs[0]
            return
    ours, theirs = _ours(data), _stdlib(data)
    assert ours[0] == theirs[0], (data, ours, theirs)
    if ours[0] == "ok":
        assert _same(ours[1], theirs[1])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18446744073709551616", 18446744073709551616),  # orjson would give a float
        ("-9223372036854775809", -9223372036854775809),
        ('{"n":[123456789012345678901234567890]}', {"n": [123456789012345678901234567890]}),
        ('"\\ud800"', "\ud800"),  # a lone surrogate escape: orjson refuses, json accepts
        ('{"a":1,"b":2,"a":3}', {"a": 3, "b": 2}),
        ('{"hex":"00000000000000000000000","n": -12345678901234567890}', None),
        ("[1.5,\n\t12345678901234567890e0, 12345678901234567890]", None),
        ('"x,12345678901234567890)"', "x,12345678901234567890)"),
        ("[" * 300 + "]" * 300, json.loads("[" * 300 + "]" * 300)),
    ],
)
def test_what_orjson_alone_gets_wrong_or_refuses(text: str, expected: Any) -> None:
    expected = json.loads(text) if expected is None else expected
    assert _same(jsoncodec.loads(text), expected)
    assert _same(jsoncodec.loads(text.encode()), expected)


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a":-Infinity}', "[1,]", "", "\ufeff{}"])
def test_not_json_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads(text)


def test_too_deep_is_a_recursion_error_as_with_json() -> None:
    with pytest.raises(RecursionError):
        jsoncodec.loads("[" * 100_000 + "]" * 100_000)


@dataclasses.dataclass
class _Point:
    x: int


@pytest.mark.parametrize(
    "value", [dt.datetime(2026, 1, 1, tzinfo=dt.UTC), _Point(1), {1, 2}, b"bytes", object()]
)
def test_dumps_refuses_what_json_refuses(value: Any) -> None:
    with pytest.raises(TypeError):
        json.dumps(value)
    with pytest.raises(TypeError):
        jsoncodec.dumps({"nested": [value]})


def test_dumps_falls_back_for_what_orjson_cannot_write() -> None:
    value = {"big": 2**70, "neg": -(2**70), 1: "int key", "é": "ü"}
    assert jsoncodec.dumps(value) == json.dumps(
        value, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def test_dumps_is_compact_utf8() -> None:
    value = {"b": [1, 2.5, None, True], "a": "é\u2028\x00"}
    assert jsoncodec.dumps(value) == json.dumps(
        value, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
