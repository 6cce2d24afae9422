# SPDX-License-Identifier: Apache-2.0
"""The one place that draws randomness for protocol values (nonces, session ids, keys ids).

Injected into the app so tests can make nonces and session ids reproducible.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

_logger = logging.getLogger(__name__)

__all__ = ["Entropy", "system_entropy"]

#: ``entropy(n)`` returns ``n`` unpredictable bytes.
Entropy = Callable[[int], bytes]


def system_entropy(n: int) -> bytes:
    """Return ``n`` bytes from the operating system's CSPRNG."""
    return secrets.token_bytes(n)
