# SPDX-License-Identifier: Apache-2.0
"""Serve the whole application under a path prefix as well as at the root.

A load balancer that routes ``/<release>/kbs/...`` and ``/<release>/as/...`` to this
server may or may not rewrite the path before forwarding it (Alibaba Cloud ALB does
with its ``rewrite-target`` annotation, and does not without it). With
``http_server.path_prefix = "/<release>"`` both arrive at the same routes:
``/trustee/kbs/v0/auth`` and ``/kbs/v0/auth`` are one endpoint, as are
``/trustee/as/...`` and ``/as/...``, ``/trustee/healthz`` and ``/healthz``.

The prefix is removed from the ASGI ``path`` (and ``raw_path``) before any routing, so
every route, present or future, is reachable both ways, and the admin ACLs keep
matching Trustee's ``^/kbs/...`` paths. ``root_path`` is left alone: the application
behaves exactly as it does behind a rewriting proxy. The session cookie carries no
``Path`` attribute, so a client's cookie jar scopes it to the prefixed directory it
called, and it is sent back on the prefixed attest and resource calls.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

_logger = logging.getLogger(__name__)

__all__ = ["PathPrefixMiddleware", "normalise_path_prefix", "strip_path_prefix"]

#: One or more ``/segment`` parts of RFC 3986 unreserved characters (no escaping needed).
_PREFIX_RE: Final = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")


def normalise_path_prefix(value: str) -> str | None:
    """Validate a configured prefix; ``""`` and ``"/"`` mean none.

    A trailing slash is dropped (``/trustee/`` is ``/trustee``).

    Raises:
        ValueError: the prefix is not ``/segment[/segment...]`` of unreserved
            characters, or a segment is ``.`` or ``..``.
    """
    prefix = value.strip()
    if prefix in ("", "/"):
        return None
    prefix = prefix.rstrip("/")
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            "path_prefix must look like /name or /a/b (letters, digits, '.', '_', '~', '-')"
        )
    if any(segment in (".", "..") for segment in prefix.split("/")[1:]):
        raise ValueError("path_prefix must not contain '.' or '..' segments")
    return prefix


def strip_path_prefix(path: str, prefix: str) -> str | None:
    """``path`` without ``prefix``, or ``None`` when it is not under the prefix.

    Only whole segments match: ``/trusteex/kbs`` is not under ``/trustee``.
    """
    if path == prefix:
        return "/"
    if path.startswith(prefix + "/"):
        return path[len(prefix) :]
    return None


class PathPrefixMiddleware:
    """Removes ``prefix`` from request paths that carry it; others pass unchanged."""

    def __init__(self, app: ASGIApp, *, prefix: str) -> None:
        """Wrap ``app``; ``prefix`` must come from :func:`normalise_path_prefix`."""
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Rewrite ``scope`` for HTTP and websocket requests, then call the app."""
        if scope["type"] in ("http", "websocket"):
            stripped = strip_path_prefix(scope["path"], self.prefix)
            if stripped is not None:
                scope = dict(scope)
                scope["path"] = stripped
                raw = scope.get("raw_path")
                if isinstance(raw, bytes):
                    raw_stripped = strip_path_prefix(raw.decode("latin-1"), self.prefix)
                    if raw_stripped is None:
                        # The prefix was percent-encoded on the wire: drop the raw form
                        # rather than keep one that disagrees with ``path``.
                        del scope["raw_path"]
                    else:
                        scope["raw_path"] = raw_stripped.encode("latin-1")
        await self.app(scope, receive, send)
