# SPDX-License-Identifier: Apache-2.0
"""ResourceDesc.parse: any input gives a descriptor or our own error, never anything else."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from storage_backends import InvalidResourcePathError, ResourceDesc, is_valid_segment
from storage_backends.base import MAX_SEGMENT_LENGTH

# Characters that matter to the grammar, plus anything at all.
_TRICKY = st.sampled_from(["/", ".", "..", "\\", "\x00", "\n", "-", "_", "a", "Z", "9", " ", "é"])
_TEXT = st.one_of(
    st.text(),
    st.lists(_TRICKY, max_size=12).map("".join),
    st.lists(st.one_of(_TRICKY, st.text(max_size=3)), max_size=12).map("".join),
)


def _assert_safe(desc: ResourceDesc) -> None:
    for segment in desc.segments:
        assert isinstance(segment, str)
        assert segment
        assert "/" not in segment
        assert "\\" not in segment
        assert "\x00" not in segment
        assert segment not in {".", ".."}
        assert not segment.startswith(".")
        assert len(segment) <= MAX_SEGMENT_LENGTH
        assert segment.isascii()
        assert is_valid_segment(segment)


@given(_TEXT)
@example("../etc/passwd")
@example("a/../b")
@example("a/b/..")
@example("a/b/c\n")
@example("a/b/c/")
@example("/a/b")
@example("a//c")
@example("a/b/" + "c" * (MAX_SEGMENT_LENGTH + 1))
@example("cai/sample/password")
def test_parse_string(path: str) -> None:
    try:
        desc = ResourceDesc.parse(path)
    except InvalidResourcePathError:
        return
    _assert_safe(desc)
    assert str(desc) == path  # valid paths round-trip exactly
    assert ResourceDesc.parse(str(desc)) == desc


@given(st.lists(st.one_of(_TEXT, st.integers(), st.none(), st.binary()), max_size=5))
def test_parse_sequence(parts: list[object]) -> None:
    try:
        desc = ResourceDesc.parse(parts)  # type: ignore[arg-type]
    except InvalidResourcePathError:
        return
    _assert_safe(desc)
    assert list(desc.segments) == parts


@pytest.mark.parametrize(
    "path",
    ["", "a", "a/b", "a/b/c/d", "../b/c", "a/./c", ".a/b/c", "a/b/.c", "a b/c/d", "a/b/c\x00"],
)
def test_invalid_paths(path: str) -> None:
    with pytest.raises(InvalidResourcePathError):
        ResourceDesc.parse(path)


def test_valid_path() -> None:
    desc = ResourceDesc.parse("cai/sample/password")
    assert desc == ResourceDesc("cai", "sample", "password")
    assert desc.segments == ("cai", "sample", "password")
    assert ResourceDesc.parse(["a.b", "c-d", "e_f.."]).tag == "e_f.."
