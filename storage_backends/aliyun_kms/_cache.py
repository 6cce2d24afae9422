# SPDX-License-Identifier: Apache-2.0
"""In-process cache of secret values, keyed by KMS secret name.

Per name it remembers the last good value and when it was fetched (monotonic seconds):

* **fresh** (age < ``ttl``): served without a KMS call;
* **stale but usable** (age <= ``ttl + max_stale``): refreshed from KMS; if the refresh
  fails transiently (throttling, outage) the stale value is served instead, and KMS is not
  asked again for ``stale_refresh_interval`` seconds;
* older: dropped; a failed refresh is an error.

A "no such secret" answer is remembered for ``negative_ttl`` seconds (0 disables it) so a
guest asking for a missing path cannot spend the account's QPS quota. The cache holds at
most ``max_entries`` names (least recently used go first). Values never leave this module
except to the backend, and nothing here logs them.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

_logger = logging.getLogger(__name__)

__all__ = ["CacheState", "SecretCache"]


class CacheState(enum.Enum):
    """What the cache knows about one name."""

    FRESH = "fresh"
    #: Stale and usable, and a refresh failed recently: serve it without asking KMS.
    STALE_BACKING_OFF = "stale, backing off"
    #: Stale and usable: ask KMS, fall back to it on a transient failure.
    STALE = "stale"
    MISSING = "known missing"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class _Entry:
    value: bytes | None  # None: the secret is known not to exist
    fetched_at: float
    retry_not_before: float = 0.0
    version: str | None = None  # the KMS version id of ``value``, when known

    def __repr__(self) -> str:
        return f"_Entry(fetched_at={self.fetched_at}, missing={self.value is None})"


class SecretCache:
    """TTL + max-stale cache of secret values with a short negative cache."""

    def __init__(
        self,
        *,
        ttl: float,
        max_stale: float,
        negative_ttl: float,
        stale_refresh_interval: float,
        max_entries: int,
        monotonic: Callable[[], float],
    ) -> None:
        """Configure the lifetimes (seconds) and the clock."""
        self._ttl = ttl
        self._max_stale = max_stale
        self._negative_ttl = negative_ttl
        self._stale_refresh_interval = stale_refresh_interval
        self._max_entries = max_entries
        self._monotonic = monotonic
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __repr__(self) -> str:
        """Count entries; never show values."""
        return f"SecretCache(entries={len(self._entries)}, ttl={self._ttl})"

    def __len__(self) -> int:
        """Number of names held (values and negative answers)."""
        return len(self._entries)

    def lookup(self, name: str) -> tuple[CacheState, bytes | None]:
        """Classify ``name`` now and return its value when one may be served."""
        entry = self._entries.get(name)
        if entry is None:
            return CacheState.UNKNOWN, None
        now = self._monotonic()
        state = self._classify(entry, now)
        if state is CacheState.UNKNOWN:
            del self._entries[name]  # expired for good
            return state, None
        self._entries.move_to_end(name)
        return state, entry.value

    def _classify(self, entry: _Entry, now: float) -> CacheState:
        age = now - entry.fetched_at
        if entry.value is None:
            return CacheState.MISSING if age < self._negative_ttl else CacheState.UNKNOWN
        if age < self._ttl:
            return CacheState.FRESH
        if age > self._ttl + self._max_stale:
            return CacheState.UNKNOWN
        if now < entry.retry_not_before:
            return CacheState.STALE_BACKING_OFF
        return CacheState.STALE

    def stale_value(self, name: str) -> bytes | None:
        """Return a value that may still be served after a failed refresh, or ``None``."""
        state, value = self.lookup(name)
        if state in {CacheState.FRESH, CacheState.STALE, CacheState.STALE_BACKING_OFF}:
            return value
        return None

    def note_failed_refresh(self, name: str) -> None:
        """Serve the stale value of ``name`` without asking KMS for a while."""
        entry = self._entries.get(name)
        if entry is not None:
            entry.retry_not_before = self._monotonic() + self._stale_refresh_interval

    def store(self, name: str, value: bytes, *, version: str | None = None) -> None:
        """Remember a freshly fetched value (and the id of its version, if known)."""
        self._put(name, _Entry(value=value, fetched_at=self._monotonic(), version=version))

    def version_of(self, name: str) -> str | None:
        """The version id stored with the value of ``name`` (no state change, no lookup)."""
        entry = self._entries.get(name)
        return entry.version if entry is not None else None

    def store_missing(self, name: str) -> None:
        """Remember that ``name`` does not exist (drops any value)."""
        if self._negative_ttl > 0:
            self._put(name, _Entry(value=None, fetched_at=self._monotonic()))
        else:
            self._entries.pop(name, None)

    def invalidate(self, name: str) -> None:
        """Forget ``name`` (after a write or delete)."""
        self._entries.pop(name, None)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()

    def _put(self, name: str, entry: _Entry) -> None:
        self._entries[name] = entry
        self._entries.move_to_end(name)
        while len(self._entries) > self._max_entries:
            evicted, _ = self._entries.popitem(last=False)
            _logger.debug("aliyun kms cache full: evicted %s", evicted)
