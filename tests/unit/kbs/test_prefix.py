# SPDX-License-Identifier: Apache-2.0
"""The path prefix: validation, whole-segment stripping, and the ASGI scope it hands on."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from kbs.prefix import PathPrefixMiddleware, normalise_path_prefix, strip_path_prefix
from kbs.settings import ConfigError, load_settings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/trustee", "/trustee"),
        ("/trustee/", "/trustee"),
        ("/a/b-c/d_e.f~g", "/a/b-c/d_e.f~g"),
        ("", None),
        ("/", None),
    ],
)
def test_prefix_normalised(value: str, expected: str | None) -> None:
    assert normalise_path_prefix(value) == expected


@pytest.mark.parametrize(
    "value", ["trustee", "/trus tee", "/a//b", "/a/../b", "/./a", "/é", "/a?b", "/a%2Fb", "/a#"]
)
def test_bad_prefix_refused(value: str) -> None:
    with pytest.raises(ValueError, match="path_prefix"):
        normalise_path_prefix(value)


def test_bad_prefix_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"http_server\.path_prefix"):
        load_settings(None, overrides={"http_server": {"path_prefix": "no-slash"}})


def test_prefix_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBS_HTTP_SERVER__PATH_PREFIX", "/trustee/")
    assert load_settings(None).http_server.path_prefix == "/trustee"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/trustee/kbs/v0/auth", "/kbs/v0/auth"),
        ("/trustee/as/attestation", "/as/attestation"),
        ("/trustee", "/"),
        ("/trustee/", "/"),
        ("/trustee/trustee/kbs", "/trustee/kbs"),  # stripped once only
        ("/trusteex/kbs", None),  # whole segments only
        ("/kbs/v0/auth", None),
        ("/", None),
    ],
)
def test_strip_whole_segments(path: str, expected: str | None) -> None:
    assert strip_path_prefix(path, "/trustee") == expected


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app answering with the path and raw path it was given."""
    if scope["type"] == "lifespan":
        return
    raw = scope.get("raw_path")
    body = (
        f"{scope['path']}|{raw.decode() if raw is not None else '-'}|{scope.get('root_path', '')}"
    )
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})


@pytest.mark.parametrize(
    ("request_path", "seen"),
    [
        ("/trustee/kbs/v0/auth", "/kbs/v0/auth|/kbs/v0/auth|"),
        ("/trustee/as/policy?x=1", "/as/policy|/as/policy|"),
        ("/kbs/v0/auth", "/kbs/v0/auth|/kbs/v0/auth|"),
        ("/healthz", "/healthz|/healthz|"),
        ("/trusteex/healthz", "/trusteex/healthz|/trusteex/healthz|"),
        # Percent-encoded prefix: path is decoded and stripped; the raw form that would
        # disagree with it is dropped.
        ("/%74rustee/healthz", "/healthz|-|"),
    ],
)
async def test_middleware_rewrites_scope(request_path: str, seen: str) -> None:
    app = PathPrefixMiddleware(_echo, prefix="/trustee")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kbs") as http:
        response = await http.get(request_path)
    assert response.text == seen


async def test_middleware_passes_other_scopes_through() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    scope = {"type": "lifespan", "path": "/trustee/x"}
    await PathPrefixMiddleware(app, prefix="/trustee")(scope, None, None)
    assert seen == [scope]
