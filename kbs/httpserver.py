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

uvicorn also puts no time limit on a request head: a connection that sends nothing, or
trickles its headers a byte at a time, is held open for ever (its keep-alive timeout
only runs between requests), and enough of them exhaust the process. A client here has
``[http_server] request_header_timeout_s`` (carried by :class:`ServerConfig`) from the
moment it connects, or starts a request, to complete the head; otherwise the
connection is closed, with ``408 Request Timeout`` if a request had begun (actix-web,
which Trustee runs on, does the same with its 5-second ``client_request_timeout``).

A complete head is measured from the parser's callbacks before the request reaches the
application. A head still incomplete after a read is bounded by the bytes received since
it began, so an endless header is cut off without being buffered. When one read holds
the end of a previous request's body and the start of the next head (HTTP pipelining,
which browsers and load balancers do not use), the whole read is counted: that bound
can exceed the true size by at most one read, never fall below it.

After a 431 or 408 the connection is half-closed and its input dropped for a second
before the close, so a client still sending reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Final

from uvicorn import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kbs.errors import ERROR_TYPE_PREFIX

_logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_HEADER_LIMIT",
    "DEFAULT_HEADER_TIMEOUT_S",
    "HeaderLimitedHttpToolsProtocol",
    "ServerConfig",
    "header_timeout_response",
    "header_too_large_response",
]

#: Used when the uvicorn config carries no limit (h11's own default).
DEFAULT_HEADER_LIMIT: Final = 16 * 1024
#: Used when the uvicorn config is not a :class:`ServerConfig`.
DEFAULT_HEADER_TIMEOUT_S: Final = 10.0


class ServerConfig(Config):
    """uvicorn's ``Config`` plus the time a client has to send a request head."""

    def __init__(
        self, *args: Any, request_header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S, **kwargs: Any
    ) -> None:
        """Take uvicorn's arguments and ``request_header_timeout_s`` (seconds)."""
        super().__init__(*args, **kwargs)
        self.request_header_timeout_s = request_header_timeout_s


def _error_response(status_line: bytes, variant: str, detail: str) -> bytes:
    body = json.dumps(
        {"type": ERROR_TYPE_PREFIX + variant, "detail": detail}, separators=(",", ":")
    ).encode()
    return b"".join(
        [
            status_line,
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            body,
        ]
    )


def header_too_large_response(limit: int) -> bytes:
    """The complete HTTP answer sent when a request head exceeds ``limit`` bytes."""
    return _error_response(
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        "RequestHeaderTooLarge",
        f"request headers exceed {limit} bytes",
    )


def header_timeout_response(timeout_s: float) -> bytes:
    """The complete HTTP answer sent when a request head is not complete in time."""
    return _error_response(
        b"HTTP/1.1 408 Request Timeout\r\n",
        "RequestTimeout",
        f"request headers not received within {timeout_s:g} s",
    )


class _HeadTooLargeError(Exception):
    """Raised from a parser callback to stop parsing a request whose head is too large."""


#: Bytes a header line takes beyond its name and value (": " and CRLF).
_HEADER_LINE_OVERHEAD: Final = 4
#: Bytes of a request line beyond its target (method, version, spaces, CRLF), at most.
_REQUEST_LINE_OVERHEAD: Final = 32
#: Seconds a refused connection is kept half-closed, its input read and dropped, so the
#: client reads our answer before the close (closing with unread input would send a
#: reset that can destroy the answer in flight).
_LINGER_S: Final = 1.0


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
        self._answered = False  # a 431 or 408 went out; the connection is closing
        config = self.config
        self._head_timeout_s = (
            config.request_header_timeout_s
            if isinstance(config, ServerConfig)
            else DEFAULT_HEADER_TIMEOUT_S
        )
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection has ``request_header_timeout_s`` to send a complete head."""
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the head timer with the connection."""
        self._stop_head_timer()
        super().connection_lost(exc)

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._answered or self.transport.is_closing():
            return
        if self._in_head:
            _logger.warning(
                "closed a connection whose request headers took over %g s from %s",
                self._head_timeout_s,
                self.client[0] if self.client else "unknown",
            )
            self._answer_and_close(header_timeout_response(self._head_timeout_s))
            return
        # A connection that never started a request is closed without an answer.
        self.transport.close()

    def on_message_begin(self) -> None:
        """A new request starts: its head is counted, and timed, from here."""
        super().on_message_begin()
        self._in_head = True
        self._head_began = True
        self._head_size = _REQUEST_LINE_OVERHEAD
        self._start_head_timer()

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
        self._stop_head_timer()
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
        if self._answered:
            return  # lingering after our answer: input is dropped
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
        self._answer_and_close(header_too_large_response(self._header_limit))

    def _answer_and_close(self, response: bytes) -> None:
        """Send ``response``, half-close, drop further input, close after a moment."""
        self._answered = True
        self._stop_head_timer()
        self.transport.write(response)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(_LINGER_S, self.transport.close)
        else:  # TLS: no half-close
            self.transport.close()
