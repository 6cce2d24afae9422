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
    """Least-recently-used map with a fixed number of entries and, optionally, a budget.

    With ``budget``, each entry also has a weight (its size, in whatever unit the caller
    measures: :meth:`put`'s ``weight``), and the least recently used entries are evicted
    until the weights add up to at most ``budget``. An entry heavier than the whole
    budget is not kept.
    """

    def __init__(self, size: int, *, budget: int | None = None) -> None:
        """Create an empty map holding at most ``size`` entries (weighing ``budget``)."""
        self._size = size
        self._budget = budget
        self._data: OrderedDict[K, V] = OrderedDict()
        self._weights: dict[K, int] = {}
        self._weight = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """Return the value for ``key`` (and mark it used), or ``None``."""
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V, *, weight: int = 1) -> None:
        """Insert or replace ``key``, evicting the least recently used entries if full."""
        with self._lock:
            self._weight -= self._weights.pop(key, 0)
            self._data.pop(key, None)
            if self._budget is not None and weight > self._budget:
                return
            self._data[key] = value
            self._weights[key] = weight
            self._weight += weight
            while len(self._data) > self._size or (
                self._budget is not None and self._weight > self._budget
            ):
                old, _ = self._data.popitem(last=False)
                self._weight -= self._weights.pop(old)

    @property
    def weight(self) -> int:
        """The weights of the entries, added up."""
        with self._lock:
            return self._weight

    def __len__(self) -> int:
        """The number of entries."""
        with self._lock:
            return len(self._data)
