# SPDX-License-Identifier: Apache-2.0
"""The one place that reads the wall clock.

Everything else receives a :class:`Clock` and reads it once per request, passing that
instant down as ``at=`` (verifiers, policies and tokens never read the clock themselves).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Protocol

_logger = logging.getLogger(__name__)

__all__ = ["Clock", "FrozenClock", "SystemClock", "monotonic"]


class Clock(Protocol):
    """A source of aware UTC instants."""

    def now(self) -> dt.datetime:
        """Return the current instant, timezone-aware, in UTC."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> dt.datetime:
        """Return ``datetime.now(UTC)``."""
        return dt.datetime.now(dt.UTC)


class FrozenClock:
    """A clock that only moves when told to (tests, replays)."""

    def __init__(self, at: dt.datetime) -> None:
        """Start the clock at ``at`` (must be timezone-aware)."""
        if at.tzinfo is None:
            raise ValueError("FrozenClock needs an aware datetime")
        self._at = at.astimezone(dt.UTC)

    def now(self) -> dt.datetime:
        """Return the frozen instant."""
        return self._at

    def advance(self, delta: dt.timedelta) -> None:
        """Move the clock forward by ``delta``."""
        self._at += delta

    def set(self, at: dt.datetime) -> None:
        """Jump to ``at``."""
        self._at = at.astimezone(dt.UTC)


def monotonic() -> float:
    """Seconds from a monotonic clock, for durations and metrics only."""
    return time.monotonic()
