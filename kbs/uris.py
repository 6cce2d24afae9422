# SPDX-License-Identifier: Apache-2.0
"""Reading key material named by URI in the configuration (``https://``, ``file://``, paths)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final
from urllib.parse import urlparse

import httpx

_logger = logging.getLogger(__name__)

__all__ = ["read_uri"]

#: Timeout for fetching keys over HTTPS.
FETCH_TIMEOUT_S: Final = 10.0
#: Largest key document accepted.
MAX_DOCUMENT_BYTES: Final = 1024 * 1024

_LOOPBACK: Final = ("127.0.0.1", "localhost", "::1")


def read_uri(uri: str) -> bytes:
    """Read a key document from ``https://``, ``file://`` or a plain path.

    Plain ``http://`` is refused except on loopback (test identity providers).

    Raises:
        ValueError: an unsupported scheme, plain HTTP off loopback, or too large.
        OSError: a file cannot be read.
        httpx.HTTPError: the HTTPS fetch failed.
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("https", "http"):
        if parsed.scheme == "http" and parsed.hostname not in _LOOPBACK:
            raise ValueError(f"refusing to fetch keys over plain http from {parsed.hostname}")
        response = httpx.get(uri, timeout=FETCH_TIMEOUT_S, follow_redirects=False)
        response.raise_for_status()
        data = response.content
    elif parsed.scheme in ("file", ""):
        data = Path(parsed.path if parsed.scheme == "file" else uri).read_bytes()
    else:
        raise ValueError(f"unsupported URI scheme {parsed.scheme!r}")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{uri} is too large")
    return data
