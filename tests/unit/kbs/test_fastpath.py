# SPDX-License-Identifier: Apache-2.0
"""GuestFastPath on its own: which requests it takes, how it calls and answers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from kbs.fastpath import GuestFastPath


class RefusedError(Exception):
    """An exception type the fast path answers."""


class BrokenError(Exception):
    """One it does not."""


class _State:
    pass


async def fetch(path: str, request: Request, state: Any) -> Response:
    if path == "refuse":
        raise RefusedError(path)
    if path == "break":
        raise BrokenError(path)
    assert isinstance(state, _State)
    return Response(f"fetch {path} {request.query_params.get('q')}".encode())


async def hello(request: Request, state: Any) -> Response:
    del state
    return Response(f"hello {(await request.body()).decode()}".encode())


async def on_error(request: Request, exc: Exception) -> Response:
    return Response(f"refused {request.url.path}: {exc}".encode(), status_code=418)


class App:
    """The inner application: records what reached it; carries the state like FastAPI."""

    def __init__(self) -> None:
        self.reached: list[str] = []
        self.state = type("S", (), {"kbs": _State()})()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.reached.append(f"{scope['method']} {scope['path']}")
        await Response(b"inner", status_code=299)(scope, receive, send)


def make(inner: App) -> GuestFastPath:
    return GuestFastPath(
        inner,
        routes=[
            APIRoute("/f/{path:path}", fetch, methods=["GET"]),
            APIRoute("/hello", hello, methods=["POST"]),
        ],
        error_types=(RefusedError,),
        on_error=on_error,
    )


async def call(fast: GuestFastPath, inner: App, method: str, url: str, **kw: Any) -> httpx.Response:
    async def with_app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = inner  # as Starlette sets it before the middleware stack
        await fast(scope, receive, send)

    transport = httpx.ASGITransport(app=with_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        return await http.request(method, url, **kw)


async def test_serves_its_routes_with_path_parameters_and_query() -> None:
    inner = App()
    fast = make(inner)
    response = await call(fast, inner, "GET", "/f/a/b/c?q=1")
    assert (response.status_code, response.text) == (200, "fetch a/b/c 1")
    response = await call(fast, inner, "POST", "/hello", content=b"body")
    assert (response.status_code, response.text) == (200, "hello body")
    assert inner.reached == []


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/f/"),  # an empty parameter: not this route
        ("GET", "/f"),
        ("HEAD", "/f/a"),  # HEAD stays with the router
        ("POST", "/f/a"),
        ("GET", "/hello"),
        ("POST", "/hello/"),
        ("POST", "/hellox"),
        ("GET", "/g/a"),
    ],
)
async def test_passes_everything_else_on(method: str, url: str) -> None:
    inner = App()
    response = await call(make(inner), inner, method, url)
    assert response.status_code == 299
    assert inner.reached == [f"{method} {url}"]


async def test_a_mounted_app_is_left_to_the_router() -> None:
    inner = App()
    fast = make(inner)

    async def mounted(scope: Scope, receive: Receive, send: Send) -> None:
        await fast({**scope, "root_path": "/mnt"}, receive, send)

    response = await call(
        GuestFastPath(mounted, routes=[], error_types=(), on_error=on_error), inner, "GET", "/f/a"
    )
    assert response.status_code == 299
    assert inner.reached == ["GET /f/a"]


async def test_handled_errors_are_answered_others_propagate() -> None:
    inner = App()
    fast = make(inner)
    response = await call(fast, inner, "GET", "/f/refuse")
    assert (response.status_code, response.text) == (418, "refused /f/refuse: refuse")
    with pytest.raises(BrokenError):
        await call(fast, inner, "GET", "/f/break")


async def test_sets_route_endpoint_and_parameters_in_the_scope() -> None:
    inner = App()
    fast = make(inner)
    seen: list[Scope] = []

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        await fast(scope, receive, send)
        seen.append(scope)

    await call(
        GuestFastPath(recording, routes=[], error_types=(), on_error=on_error),
        inner,
        "GET",
        "/f/x/y",
    )
    assert seen[0]["route"].path == "/f/{path:path}"
    assert seen[0]["endpoint"] is fetch
    assert seen[0]["path_params"] == {"path": "x/y"}


async def needs_more(path: str, request: Request, state: Any, extra: int) -> Response:
    raise AssertionError("never called")


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (APIRoute("/x/{path:path}", needs_more, methods=["GET"]), "more than request and state"),
        (APIRoute("/x/{path}", fetch, methods=["GET"]), "trailing {name:path}"),
        (APIRoute("/x/{path:path}/y", fetch, methods=["GET"]), "trailing {name:path}"),
    ],
)
def test_refuses_routes_it_cannot_serve_exactly(route: APIRoute, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GuestFastPath(App(), routes=[route], error_types=(), on_error=on_error)
