# SPDX-License-Identifier: Apache-2.0
"""The guest endpoints' short way through the stack.

Every guest request (``POST /kbs/v0/auth``, ``POST /kbs/v0/attest``, ``GET
/kbs/v0/resource/<path>``) used to pass FastAPI's own layers (error middleware, body-limit
and telemetry wrappers, exit stack, the router trying every route, dependency solving)
before reaching a handler that needs only the request and the application state. Those
layers cost about a fifth of a Bearer resource fetch. :class:`GuestFastPath` sits inside
all of our middlewares (request id, metrics, catch-all, control characters) and calls the
endpoint functions of the guest routes directly, with the error handlers the application
registered for our exception types. Anything else, including other methods on the same
paths, goes on to FastAPI unchanged.

The answers are those of the routed path: the same functions run with the same
arguments; ``scope["route"]`` is set to the route, so metrics label it by its template;
an error type without a handler here propagates as it would through the router (to the
catch-all's 500).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from kbs.deps import get_state

__all__ = ["ErrorHandler", "GuestFastPath"]

#: Turns one of the handled exception types into the error answer.
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]

#: Parameters an endpoint may take besides its path parameters.
_INJECTED: Final = frozenset({"request", "state"})
#: The one path-parameter form served here: a trailing ``{name:path}``.
_PATH_PARAM_SUFFIX: Final = ":path}"


class GuestFastPath:
    """Pure ASGI middleware: serve the given routes by calling their endpoints directly.

    Each route must be either a fixed path or a fixed prefix followed by one
    ``{name:path}`` parameter, and no route of the application that comes before it may
    match the same requests (``tests/integration/test_fastpath_parity.py`` checks this for
    the routes :func:`kbs.app.create_app` passes, against the same app without it). A
    prefixed route is served only when the parameter is not empty.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[APIRoute],
        error_types: tuple[type[Exception], ...],
        on_error: ErrorHandler,
    ) -> None:
        """Wrap ``app``; ``on_error`` answers the ``error_types`` the endpoints raise."""
        self.app = app
        self._error_types = error_types
        self._on_error = on_error
        self._exact: dict[tuple[str, str], APIRoute] = {}
        self._prefixed: list[tuple[str, str, str, APIRoute]] = []
        for route in routes:
            self._add(route)

    def _add(self, route: APIRoute) -> None:
        params = set(route.param_convertors)
        accepted = set(inspect.signature(route.endpoint).parameters)
        if accepted - params - _INJECTED:
            raise ValueError(f"{route.path}: the endpoint needs more than request and state")
        methods = (route.methods or set()) - {"HEAD"}
        if not params:
            for method in methods:
                self._exact[(method, route.path)] = route
            return
        prefix, brace, rest = route.path.partition("{")
        name = rest.removesuffix(_PATH_PARAM_SUFFIX)
        if not brace or len(params) != 1 or not rest.endswith(_PATH_PARAM_SUFFIX) or "{" in name:
            raise ValueError(f"{route.path}: only a trailing {{name:path}} parameter is served")
        for method in methods:
            self._prefixed.append((method, prefix, name, route))

    def match(self, method: str, path: str) -> tuple[APIRoute, dict[str, str]] | None:
        """The route this middleware serves for ``method`` and ``path``, with its parameters."""
        route = self._exact.get((method, path))
        if route is not None:
            return route, {}
        for route_method, prefix, name, route in self._prefixed:
            if method == route_method and path.startswith(prefix) and len(path) > len(prefix):
                return route, {name: path[len(prefix) :]}
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a guest route directly; pass everything else on."""
        if scope["type"] != "http" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        found = self.match(scope["method"], scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        route, params = found
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = params
        request = Request(scope, receive, send)
        response: Response
        try:
            response = await route.endpoint(**params, request=request, state=get_state(request))
        except self._error_types as exc:
            response = await self._on_error(request, exc)
        await response(scope, receive, send)
