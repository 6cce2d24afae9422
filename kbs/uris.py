# SPDX-License-Identifier: Apache-2.0
"""Reading key material named by URI in the configuration (``https://``, ``file://``, paths)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Final
from urllib.parse import urlparse

import httpx

_logger = logging.getLogger(__name__)

__all__ = ["read_uri"]

#: Timeout for each step (connect, each read) of fetching keys over HTTPS.
FETCH_TIMEOUT_S: Final = 10.0
#: The whole fetch ends this long after it started (checked as each chunk arrives, so
#: at most FETCH_TIMEOUT_S later): a server dripping its answer cannot stall start-up.
FETCH_DEADLINE_S: Final = 20.0
#: Largest key document accepted.
MAX_DOCUMENT_BYTES: Final = 1024 * 1024

_LOOPBACK: Final = ("127.0.0.1", "localhost", "::1")


def read_uri(uri: str) -> bytes:
    """Read a key document from ``https://``, ``file://`` or a plain path.

    Plain ``http://`` is refused except on loopback (test identity providers).

    Raises:
        ValueError: an unsupported scheme, plain HTTP off loopback, too large, or (over
            HTTPS) not complete within ``FETCH_DEADLINE_S``.
        OSError: a file cannot be read.
        httpx.HTTPError: the HTTPS fetch failed.
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("https", "http"):
        if parsed.scheme == "http" and parsed.hostname not in _LOOPBACK:
            raise ValueError(f"refusing to fetch keys over plain http from {parsed.hostname}")
        data = _fetch(uri)
    elif parsed.scheme in ("file", ""):
        data = Path(parsed.path if parsed.scheme == "file" else uri).read_bytes()
    else:
        raise ValueError(f"unsupported URI scheme {parsed.scheme!r}")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{uri} is too large")
    return data


def _fetch(uri: str) -> bytes:
    # Streamed: a body is refused once it passes the size cap, not after it is all read.
    deadline = time.monotonic() + FETCH_DEADLINE_S
    with httpx.stream("GET", uri, timeout=FETCH_TIMEOUT_S, follow_redirects=False) as response:
        response.raise_for_status()
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"{uri} is too large")
            if time.monotonic() > deadline:
                raise ValueError(f"{uri}: no complete answer within {FETCH_DEADLINE_S:g} s")
        return bytes(body)
