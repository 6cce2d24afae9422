# SPDX-License-Identifier: Apache-2.0
"""Resource path patterns and grants (kbs/scopes.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kbs.scopes import ALLOW_ALL, GLOBAL, Grant, Grants, PathPattern
from storage_backends import ResourceDesc

CAI = ResourceDesc("cai", "key", "model")
ALIYUN = ResourceDesc("default", "aliyun", "model")


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("*", "*"),
        ("cai/*", "cai/*"),
        ("cai/*/*", "cai/*"),
        ("default/aliyun/*", "default/aliyun/*"),
        ("*/aliyun/*", "*/aliyun/*"),
        ("a/b/c", "a/b/c"),
        ("*/*/tag", "*/*/tag"),
    ],
)
def test_canonical_form(text: str, canonical: str) -> None:
    assert str(PathPattern.parse(text)) == canonical
    assert PathPattern.parse(canonical) == PathPattern.parse(text)


@pytest.mark.parametrize("bad", ["", "cai", "cai/key", "a/b/c/d", ".x/*", "a//*", "a/../*", "**"])
def test_invalid_patterns(bad: str) -> None:
    with pytest.raises(ValueError):
        PathPattern.parse(bad)


def test_matches_and_covers() -> None:
    cai = PathPattern.parse("cai/*")
    assert cai.matches(CAI)
    assert not cai.matches(ALIYUN)
    assert cai.covers(PathPattern.parse("cai/key/*"))
    assert not cai.covers(GLOBAL)
    assert not PathPattern.parse("cai/key/*").covers(cai)
    assert GLOBAL.covers(cai)
    assert GLOBAL.is_everything
    assert not cai.is_everything


def test_permissions() -> None:
    grants = Grants(
        [
            Grant("cai-admin", frozenset({"read", "write"}), (PathPattern.parse("cai/*"),)),
            Grant("auditor", frozenset({"audit"}), (GLOBAL,)),
        ]
    )
    cai = grants.for_roles(["cai-admin"])
    assert cai.allows("read", CAI)
    assert cai.allows("write", PathPattern.parse("cai/key/*"))
    assert not cai.allows("delete", CAI)
    assert not cai.allows("read", ALIYUN)
    assert not cai.allows("read")  # the global scope needs a grant on *
    both = grants.for_roles(["cai-admin", "auditor"])
    assert both.allows("audit")
    assert both.visible("read") == (PathPattern.parse("cai/*"),)
    assert grants.knows_any(["x", "auditor"])
    assert not grants.knows_any(["x"])
    assert ALLOW_ALL.allows("delete", ALIYUN)
    assert ALLOW_ALL.visible("read") is None


segment = st.from_regex(r"[a-z][a-z0-9_.-]{0,5}", fullmatch=True)


@given(
    st.lists(st.one_of(segment, st.just("*")), min_size=3, max_size=3),
    st.tuples(segment, segment, segment),
)
def test_exact_patterns_match_only_their_path(parts: list[str], path: tuple[str, str, str]) -> None:
    pattern = PathPattern.parse("/".join(parts))
    desc = ResourceDesc(*path)
    assert pattern.matches(desc) == all(p in ("*", s) for p, s in zip(parts, path, strict=True))
    assert pattern.matches(desc) == pattern.covers(PathPattern.exact(desc))
