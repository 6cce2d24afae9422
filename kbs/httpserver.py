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

A complete head is measured from the parser's callbacks before the request reaches the
application. A head still incomplete after a read is bounded by the bytes received since
it began, so an endless header is cut off without being buffered. When one read holds
the end of a previous request's body and the start of the next head (HTTP pipelining,
which browsers and load balancers do not use), the whole read is counted: that bound
can exceed the true size by at most one read, never fall below it.
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


class _HeadTooLargeError(Exception):
    """Raised from a parser callback to stop parsing a request whose head is too large."""


#: Bytes a header line takes beyond its name and value (": " and CRLF).
_HEADER_LINE_OVERHEAD: Final = 4
#: Bytes of a request line beyond its target (method, version, spaces, CRLF), at most.
_REQUEST_LINE_OVERHEAD: Final = 32


class HeaderLimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that refuses request heads above a byte limit.

    Two checks: a complete head is measured from the parser's callbacks (target, header
    names and values) before the request reaches the application; a head still
    incomplete after a read is bounded by the bytes received since it began, so a
    never-ending header is cut off without being buffered.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Take the limit from the uvicorn config (``h11_max_incomplete_event_size``)."""
        super().__init__(*args, **kwargs)
        configured = self.config.h11_max_incomplete_event_size
        self._header_limit = int(configured) if configured else DEFAULT_HEADER_LIMIT
        self._in_head = False  # inside a request line and headers
        self._head_began = False  # ... that began in the read being parsed
        self._head_bytes = 0  # bytes received for the incomplete head (upper bound)
        self._head_size = _REQUEST_LINE_OVERHEAD  # the head's size from the callbacks
        self._refused = False

    def on_message_begin(self) -> None:
        """A new request starts: its head is counted from here."""
        super().on_message_begin()
        self._in_head = True
        self._head_began = True
        self._head_size = _REQUEST_LINE_OVERHEAD

    def on_url(self, url: bytes) -> None:
        """Count the request target."""
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count one header line."""
        self._head_size += len(name) + len(value) + _HEADER_LINE_OVERHEAD
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """Refuse a head over the limit before the request reaches the application.

        Raises:
            _HeadTooLargeError: the head is too large (the parser stops; uvicorn then
                calls :meth:`send_400_response`, which answers 431 instead).
        """
        self._in_head = False
        if self._head_size > self._header_limit:
            self._refused = True
            raise _HeadTooLargeError
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """Answer 431 for a head refused by a callback; other parse errors stay 400."""
        if self._refused:
            self._refuse()
            return
        super().send_400_response(msg)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, then refuse the connection if an incomplete head passed the limit."""
        self._head_began = False
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        # A head that began in this read has at most len(data) bytes so far.
        self._head_bytes = len(data) if self._head_began else self._head_bytes + len(data)
        if self._head_bytes > self._header_limit:
            self._refuse()

    def _refuse(self) -> None:
        _logger.warning(
            "refused a request whose headers exceed %d bytes from %s",
            self._header_limit,
            self.client[0] if self.client else "unknown",
        )
        self.transport.write(header_too_large_response(self._header_limit))
        self.transport.close()
