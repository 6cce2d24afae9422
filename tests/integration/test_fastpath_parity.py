# SPDX-License-Identifier: Apache-2.0
"""The guest fast path (kbs/fastpath.py) answers exactly as FastAPI's routing would.

Two applications with the same data, one with the fast path taken out of its middleware
list, get the same requests: every answer must match in status, error type and detail,
the endpoint that served it, and the route template metrics see.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from kbs.fastpath import GuestFastPath
from support.kbs_app import (
    SAMPLE_REFERENCE_VALUES,
    make_admin_key,
    running_kbs,
    settings_for,
    without_request_id,
)

SECRET = b"fast-path-secret"

#: Methods and paths around the guest routes, the edges of their patterns included.
REQUESTS = [
    (method, path)
    for method in ("GET", "POST", "HEAD", "DELETE", "PUT")
    for path in (
        "/kbs/v0/resource/cai/sample/key",
        "/kbs/v0/resource/cai/sample/absent",
        "/kbs/v0/resource/cai/sample/key?version=nope",
        "/kbs/v0/resource/cai/sample/key?%76ersion=nope",
        "/kbs/v0/resource/cai/sample/key?x=1&x=2",
        "/kbs/v0/resource/",
        "/kbs/v0/resource",
        "/kbs/v0/resource/a",
        "/kbs/v0/resource/a/b",
        "/kbs/v0/resource/a/b/c/d",
        "/kbs/v0/resource//sample/key",
        "/kbs/v0/resource/cai/sample/key/",
        "/kbs/v0/resource/cai/%2e%2e/key",
        "/kbs/v0/resource/cai/sample/k%0ay",
        "/kbs/v0/resource-versions/cai/sample/key",
        "/kbs/v0/auth",
        "/kbs/v0/auth/",
        "/kbs/v0/authx",
        "/kbs/v0/attest",
        "/kbs/v0/attest/",
        "/kbs//v0/attest",
    )
]


async def _answers(tmp_path: Path, *, fast: bool) -> list[tuple[Any, ...]]:
    admin_key = make_admin_key(tmp_path)
    async with running_kbs(settings_for(tmp_path, admin_key), admin_key=admin_key) as kbs:
        if not fast:
            # Before the first request, when Starlette builds the middleware stack.
            kbs.app.user_middleware = [
                m for m in kbs.app.user_middleware if m.cls is not GuestFastPath
            ]
        assert any(m.cls is GuestFastPath for m in kbs.app.user_middleware) is fast
        admin = kbs.admin()
        await admin.set_reference_values(SAMPLE_REFERENCE_VALUES)
        await admin.set_resource("cai/sample/key", SECRET)
        async with kbs.guest() as guest:
            token = await guest.attest()
        seen: list[Scope] = []

        async def recording(scope: Scope, receive: Receive, send: Send) -> None:
            await kbs.app(scope, receive, send)
            seen.append(scope)

        answers = []
        async with _client(recording) as http:
            for method, path in REQUESTS:
                for body in (None, b'{"version":"0.4.0","tee":"sample","extra-params":""}'):
                    response = await http.request(
                        method,
                        path,
                        content=body,
                        headers={"authorization": f"Bearer {token}"},
                    )
                    scope = seen.pop()
                    route = scope.get("route")
                    endpoint = scope.get("endpoint")
                    answers.append(
                        (
                            method,
                            path,
                            body is not None,
                            response.status_code,
                            _shape(response),
                            getattr(route, "path", None),
                            getattr(endpoint, "__name__", None),
                            response.headers.get("content-type"),
                            "x-request-id" in response.headers,
                        )
                    )
        return answers


@contextlib.asynccontextmanager
async def _client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://kbs"
    ) as http:
        yield http


def _shape(response: httpx.Response) -> Any:
    """The comparable part of an answer: error bodies whole, success bodies by their keys."""
    if not response.content:
        return None
    try:
        body = response.json()
    except ValueError:
        return response.content
    if response.status_code >= 400:
        return without_request_id(body)
    return sorted(body) if isinstance(body, dict) else type(body).__name__


@pytest.fixture
def two_dirs(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "fast").mkdir()
    (tmp_path / "routed").mkdir()
    return tmp_path / "fast", tmp_path / "routed"


async def test_fast_path_answers_as_the_router_does(two_dirs: tuple[Path, Path]) -> None:
    fast = await _answers(two_dirs[0], fast=True)
    routed = await _answers(two_dirs[1], fast=False)
    assert len(fast) == len(routed) == 2 * len(REQUESTS)
    for one, other in zip(fast, routed, strict=True):
        assert one == other
    # The guest answers were really served, and by the fast path's endpoints.
    served = {(a[0], a[1], a[2]): a for a in fast}
    released = served[("GET", "/kbs/v0/resource/cai/sample/key", False)]
    assert released[3] == 200
    assert released[5:7] == ("/kbs/v0/resource/{path:path}", "get_resource")
    opened = served[("POST", "/kbs/v0/auth", True)]
    assert opened[3] == 200
    assert opened[5:7] == ("/kbs/v0/auth", "auth")
