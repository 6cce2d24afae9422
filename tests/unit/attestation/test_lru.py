# SPDX-License-Identifier: Apache-2.0
"""attestation.lru.Lru against a plain model: which entries are kept, by count and weight."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given
from hypothesis import strategies as st

from attestation.lru import Lru

KEYS = st.integers(0, 7)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), KEYS, st.integers(0, 12)),
        st.tuples(st.just("get"), KEYS, st.just(0)),
    ),
    max_size=60,
)


class Model:
    """The obvious list-based LRU: newest last; evict from the front."""

    def __init__(self, size: int, budget: int | None) -> None:
        self.size, self.budget = size, budget
        self.entries: OrderedDict[int, tuple[str, int]] = OrderedDict()

    def put(self, key: int, value: str, weight: int) -> None:
        self.entries.pop(key, None)
        if self.budget is not None and weight > self.budget:
            return
        self.entries[key] = (value, weight)
        while len(self.entries) > self.size or (
            self.budget is not None and sum(w for _, w in self.entries.values()) > self.budget
        ):
            self.entries.popitem(last=False)

    def get(self, key: int) -> str | None:
        if key not in self.entries:
            return None
        self.entries.move_to_end(key)
        return self.entries[key][0]


@given(size=st.integers(1, 5), budget=st.none() | st.integers(0, 20), steps=STEPS)
def test_lru_keeps_what_the_model_keeps(size: int, budget: int | None, steps: list) -> None:
    lru: Lru[int, str] = Lru(size, budget=budget)
    model = Model(size, budget)
    for n, (op, key, weight) in enumerate(steps):
        if op == "put":
            value = f"v{n}"
            if budget is None:
                lru.put(key, value)
                model.put(key, value, 1)
            else:
                lru.put(key, value, weight=weight)
                model.put(key, value, weight)
        else:
            assert lru.get(key) == model.get(key)
        assert len(lru) == len(model.entries)
        expected_weight = sum(w for _, w in model.entries.values())
        assert lru.weight == (expected_weight if budget is not None else len(model.entries))
    for key in range(8):
        assert lru.get(key) == model.get(key)


def test_an_entry_heavier_than_the_budget_is_not_kept_and_replaces_nothing() -> None:
    lru: Lru[str, int] = Lru(4, budget=10)
    lru.put("a", 1, weight=6)
    lru.put("b", 2, weight=11)
    assert (lru.get("a"), lru.get("b"), lru.weight) == (1, None, 6)
    # Replacing a key with a value too heavy to keep drops the old value too.
    lru.put("a", 3, weight=11)
    assert (lru.get("a"), len(lru), lru.weight) == (None, 0, 0)
