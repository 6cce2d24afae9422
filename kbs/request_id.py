# SPDX-License-Identifier: Apache-2.0
"""Request ids: every answer carries ``X-Request-Id``; logs and audit records name it.

A client (or a proxy in front of the KBS) may send ``X-Request-Id``; a value of at most
128 characters from ``[A-Za-z0-9._:+/=-]`` is echoed, anything else is replaced by 16
bytes from the injected entropy in hex. Error bodies add a ``request_id`` member (the
reference's ``{type, detail}`` clients ignore unknown members), and the errors a guest
sees on ``/auth``, ``/attest`` and resource reads also name it in ``detail``, which is
what the reference client logs. ``grep <id>`` in the KBS log then finds the explanation.
"""

from __future__ import annotations

import contextvars
import logging
import re
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kbs.entropy import Entropy

_logger = logging.getLogger(__name__)

__all__ = [
    "REQUEST_ID_HEADER",
    "RequestIdMiddleware",
    "current_request_id",
    "is_guest_request",
]

#: The header carrying the id, both ways.
REQUEST_ID_HEADER: Final = "X-Request-Id"
#: Bytes of entropy in a generated id (32 hex characters).
REQUEST_ID_BYTES: Final = 16
_ACCEPTED: Final = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")

_current: Final[contextvars.ContextVar[str | None]] = contextvars.ContextVar(
    "kbs_request_id", default=None
)


def current_request_id() -> str | None:
    """The id of the request being served (``None`` outside a request)."""
    return _current.get()


def is_guest_request(method: str, path: str) -> bool:
    """Whether ``method path`` is one of the guest's protocol calls."""
    return path in ("/kbs/v0/auth", "/kbs/v0/attest") or (
        method == "GET" and path.startswith("/kbs/v0/resource/")
    )


class RequestIdMiddleware:
    """Pure ASGI middleware: choose the id, expose it, and add the response header."""

    def __init__(self, app: ASGIApp, *, entropy: Entropy) -> None:
        """Wrap ``app``; ``entropy`` makes ids for requests that bring none."""
        self.app = app
        self._entropy = entropy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request with its id in a context variable and the answer's headers."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                offered = value.decode("latin-1")
                break
        request_id = (
            offered
            if offered is not None and _ACCEPTED.fullmatch(offered)
            else self._entropy(REQUEST_ID_BYTES).hex()
        )
        token = _current.set(request_id)
        header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != header[0]]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)
