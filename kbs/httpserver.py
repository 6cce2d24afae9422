# SPDX-License-Identifier: Apache-2.0
"""The HTTP/1.1 protocol ``kbs serve`` runs: uvicorn's httptools one, with a header limit.

uvicorn's httptools protocol puts no bound on the request line and header section: a
client that sends an endless header grows the process's memory until it dies. (Its h11
protocol stops at ``h11_max_incomplete_event_size``, 16 KiB by default, which refuses the
32 KiB Bearer tokens that attestation tokens with large claims need.) This protocol
counts the bytes a request's head takes and, above the limit, answers ``431 Request
Header Fields Too Large`` with the KBS error body and closes the connection; other
connections are unaffected.

The limit is read from the uvicorn ``Config`` field ``h11_max_incomplete_event_size``
(the same notion in h11's terms), so one value, set by ``kbs serve`` from
``[http_server] request_header_size``, holds whichever protocol runs and survives the
pickling of the config into worker processes.

The count is of the bytes received while a request head is incomplete. When one read
holds the end of a previous request's body and the start of the next head (HTTP
pipelining, which browsers and load balancers do not use), the whole read is counted:
the count can exceed the true head size by at most one read, never fall below it.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kbs.errors import ERROR_TYPE_PREFIX

_logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_HEADER_LIMIT", "HeaderLimitedHttpToolsProtocol", "header_too_large_response"]

#: Used when the uvicorn config carries no limit (h11's own default).
DEFAULT_HEADER_LIMIT: Final = 16 * 1024

_STATUS_431: Final = b"HTTP/1.1 431 Request Header Fields Too Large\r\n"


def header_too_large_response(limit: int) -> bytes:
    """The complete HTTP answer sent when a request head exceeds ``limit`` bytes."""
    body = json.dumps(
        {
            "type": ERROR_TYPE_PREFIX + "RequestHeaderTooLarge",
            "detail": f"request headers exceed {limit} bytes",
        },
        separators=(",", ":"),
    ).encode()
    return b"".join(
        [
            _STATUS_431,
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            body,
        ]
    )


class HeaderLimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that refuses request heads above a byte limit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Take the limit from the uvicorn config (``h11_max_incomplete_event_size``)."""
        super().__init__(*args, **kwargs)
        configured = self.config.h11_max_incomplete_event_size
        self._header_limit = int(configured) if configured else DEFAULT_HEADER_LIMIT
        self._in_head = False  # inside a request line and headers
        self._head_began = False  # ... that began in the read being parsed
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        """A new request starts: its head is counted from here."""
        super().on_message_begin()
        self._in_head = True
        self._head_began = True

    def on_headers_complete(self) -> None:
        """The head is complete: the body that follows is not counted."""
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        """Feed the parser, then refuse the connection if the head grew past the limit."""
        self._head_began = False
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        # A head that began in this read has at most len(data) bytes so far.
        self._head_bytes = len(data) if self._head_began else self._head_bytes + len(data)
        if self._head_bytes > self._header_limit:
            _logger.warning(
                "refused a request whose headers exceed %d bytes from %s",
                self._header_limit,
                self.client[0] if self.client else "unknown",
            )
            self.transport.write(header_too_large_response(self._header_limit))
            self.transport.close()
