# SPDX-License-Identifier: Apache-2.0
"""A small thread-safe LRU map, for memos of pure results (parsed chains, verified tokens)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

_logger = logging.getLogger(__name__)

__all__ = ["Lru"]

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """Least-recently-used map with a fixed number of entries."""

    def __init__(self, size: int) -> None:
        """Create an empty map holding at most ``size`` entries."""
        self._size = size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """Return the value for ``key`` (and mark it used), or ``None``."""
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        """Insert or replace ``key``, evicting the least recently used entry if full."""
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        """The number of entries."""
        with self._lock:
            return len(self._data)
