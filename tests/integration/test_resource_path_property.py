# SPDX-License-Identifier: Apache-2.0
"""Any resource path sent over HTTP is a stored resource or our 404, never a traversal.

The path reaches ``ResourceDesc.parse`` after URL decoding, so the property is checked
where it matters: through the router, against the LocalFs backend writing real files.
``KBS_FUZZ_EXAMPLES`` raises the count (tools/fuzz_parsers.py does).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis.python import asgi as st_asgi

from kbs.app import create_app
from kbs.errors import ERROR_TYPE_PREFIX
from storage_backends import InvalidResourcePathError, ResourceDesc
from support.api_fuzz import admin_token
from support.kbs_app import make_admin_key, now_clock, settings_for

EXAMPLES = int(os.environ.get("KBS_FUZZ_EXAMPLES", "200"))
#: Paths that must be accepted (explicit examples: the storage check always runs).
_VALID = ("repo/key/tag", "a-b/c_d/e.f")
#: What every request stores (so a file holding it is a stored value).
_VALUE = b"secret value 0f3c"

_TRICKY = st.sampled_from(
    ["/", ".", "..", "%2e", "%2f", "%00", "\\", "\x00", "\n", "~", "a", "b", "-", "_", "é", " "]
)
_PATHS = st.one_of(
    st.text(max_size=40),
    st.lists(_TRICKY, max_size=14).map("".join),
    st.lists(st.one_of(_TRICKY, st.text(max_size=4)), min_size=1, max_size=10).map("".join),
    # Three segments, so that many paths are accepted and their storage place is checked.
    st.lists(
        st.lists(
            st.one_of(_TRICKY, st.sampled_from(["a", "key", "x1"])), min_size=1, max_size=3
        ).map("".join),
        min_size=3,
        max_size=3,
    ).map("/".join),
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, Path]]:
    tmp = tmp_path_factory.mktemp("paths")
    key = make_admin_key(tmp)
    app = create_app(settings_for(tmp, key), clock=now_clock())
    # A synchronous in-process client (no URL normalisation: ".." reaches the app as is).
    try:
        with st_asgi.get_client(app) as client:
            yield client, key, tmp
    finally:
        st_asgi.shutdown_lifespans()


def _secrets_outside(root: Path, base: Path) -> list[Path]:
    """Files under ``base`` holding a stored value but not under ``root`` once resolved."""
    return [
        p
        for p in base.rglob("*")
        if p.is_file() and root not in p.resolve().parents and p.read_bytes() == _VALUE
    ]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=_PATHS)
# Valid paths, so that some are always stored and their place checked.
@example(path="repo/key/tag")
@example(path="a-b/c_d/e.f")
def test_any_path_is_stored_in_place_or_refused(served, path: str) -> None:
    client, key, tmp = served
    # Absolute, so no client-side joining resolves dot segments before the app sees them.
    url = "http://testserver/kbs/v0/resource/" + quote(path, safe="/%")
    headers = {"Authorization": f"Bearer {admin_token(key)}"}
    stored = client.post(url, data=_VALUE, headers=headers)
    fetched = client.get(url)
    assert stored.status_code in (200, 401, 404), stored.text
    assert fetched.status_code in (401, 404), fetched.text
    if path in _VALID:
        assert stored.status_code == 200, stored.text
    if stored.status_code != 200:
        # Refused: our body (401 when the decoded URL names another admin endpoint).
        assert stored.json()["type"].startswith(ERROR_TYPE_PREFIX)
        return
    # Accepted: the path the server saw is a valid descriptor, stored under its repository.
    seen = unquote(urlsplit(stored.request.url).path).removeprefix("/kbs/v0/resource/")
    try:
        desc = ResourceDesc.parse(seen)
    except InvalidResourcePathError:
        pytest.fail(f"stored under an invalid path {seen!r}")
    for segment in desc.segments:
        assert segment not in (".", "..")
        assert "/" not in segment
        assert "\x00" not in segment
    repository = tmp / "repository"
    assert (repository / desc.repository / desc.type / desc.tag).read_bytes() == _VALUE
    assert not _secrets_outside(repository.resolve(), tmp)
