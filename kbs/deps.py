# SPDX-License-Identifier: Apache-2.0
"""Request-level helpers shared by the routes: state access, bodies, JSON answers."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Final

from fastapi import Depends, Request, Response

from kbs import jsoncodec
from kbs.errors import PayloadTooLargeError, SerdeError
from kbs.state import KbsState

_logger = logging.getLogger(__name__)

__all__ = ["SESSION_COOKIE", "StateDep", "get_state", "json_response", "read_body", "read_json"]

#: The reference's session cookie name.
SESSION_COOKIE: Final = "kbs-session-id"


def get_state(request: Request) -> KbsState:
    """The application's :class:`KbsState` (set up by the lifespan)."""
    state: KbsState = request.app.state.kbs
    return state


async def _state_dependency(request: Request) -> KbsState:
    # A coroutine so FastAPI calls it inline: a plain function dependency is run in the
    # thread pool, one thread hand-off per request.
    return get_state(request)


StateDep = Annotated[KbsState, Depends(_state_dependency)]


async def read_body(request: Request, limit: int) -> bytes:
    """Read the request body, refusing more than ``limit`` bytes.

    A declared ``Content-Length`` above the limit is refused before anything is read; a
    body without one (chunked) is refused at the first chunk that would pass the limit,
    which is not kept: at most ``limit`` bytes are ever held. (uvicorn stops reading the
    socket while the application has not taken what it has, so it holds at most one
    high-water mark more.)

    Raises:
        PayloadTooLargeError: the body (or its declared length) exceeds ``limit``.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise PayloadTooLargeError(f"request body exceeds {limit} bytes")
        body += chunk
    return bytes(body)


async def read_json(request: Request, limit: int) -> Any:
    """Read and parse a JSON body.

    Raises:
        PayloadTooLargeError: the body is too large.
        SerdeError: the body is not JSON, or nested too deeply to parse.
    """
    body = await read_body(request, limit)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SerdeError("request body is not valid JSON") from exc
    except RecursionError as exc:
        # "[[[[..." within the size limit exhausts the parser's stack: the client's fault.
        raise SerdeError("request body is nested too deeply") from exc


def json_response(
    value: Any, *, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A compact ``application/json`` answer."""
    return Response(
        content=jsoncodec.dumps(value),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )
