# SPDX-License-Identifier: Apache-2.0
"""Release decisions on a kept engine give what a fresh clone of the policy gives.

RegoEngine.allow keeps one engine per (policy, data) and only swaps the input; these
tests run random sequences of decisions through it and compare each one with an
evaluation on a brand-new regorus engine.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import regorus
from hypothesis import given, settings
from hypothesis import strategies as st

from policy import RegoEngine
from policy.defaults import DEFAULT_RESOURCE_POLICY, SAMPLE_RESOURCE_POLICIES
from policy.engine import ALLOW_RULE

POLICIES = [
    DEFAULT_RESOURCE_POLICY,
    SAMPLE_RESOURCE_POLICIES["allow_all"],
    SAMPLE_RESOURCE_POLICIES["deny_all"],
    # Reads the request (data) and the claims (input) together.
    """package policy
default allow := false
allow if {
    input.submods.cpu0["ear.status"] == "affirming"
    data["resource-path"][0] == input.repo
    not data.query.deny
}
""",
    # Partial set and object rules built from the input: a stale value would show.
    """package policy
names contains name if some name, _ in input.submods
tiers[name] := a["ear.status"] if some name, a in input.submods
allow if {
    count(names) == count(tiers)
    every name in names { tiers[name] != "contraindicated" }
    count(names) >= data.query.min
}
""",
    # `with` replaces input for one expression only.
    """package policy
affirming if input.submods.cpu0["ear.status"] == "affirming"
allow if {
    affirming with input as {"submods": {"cpu0": {"ear.status": "affirming"}}}
    not affirming
}
""",
    # An evaluation error for some inputs (a non-number); a failed engine is dropped.
    """package policy
allow if input.svn + 1 > data.query.min
""",
]

STATUS = st.sampled_from(["affirming", "warning", "contraindicated", "none", 7])
INPUTS = st.fixed_dictionaries(
    {
        "submods": st.dictionaries(
            st.sampled_from(["cpu0", "gpu0", "gpu1"]),
            st.fixed_dictionaries({"ear.status": STATUS}),
            max_size=3,
        )
    },
    optional={
        "repo": st.sampled_from(["repo", "other"]),
        "svn": st.one_of(st.integers(0, 5), st.just("x")),
        "evaluation-reports": st.lists(st.just({"policy-id": "default"}), max_size=2),
    },
)
DATA = st.fixed_dictionaries(
    {
        "plugin": st.just("resource"),
        "resource-path": st.sampled_from([["repo", "key", "1"], ["other", "key", "1"]]),
        "query": st.sampled_from([{}, {"deny": "1"}, {"min": 1}, {"min": 2}]),
    }
)


#: Random sequences of (policy index, input, data) decisions.
STEPS = st.lists(
    st.tuples(st.integers(0, len(POLICIES) - 1), INPUTS, DATA), min_size=1, max_size=30
)


def _fresh(policy: str, input_: dict[str, Any], data: dict[str, Any]) -> Any:
    """True, False, another value, None (undefined) or "error", on a new engine."""
    engine = regorus.Engine()
    engine.add_policy("policy.rego", policy)
    engine.add_data(data)
    engine.set_input(input_)
    try:
        return engine.eval_rule(ALLOW_RULE)
    except RuntimeError as exc:
        return None if "not a valid rule path" in str(exc) else "error"


def _expected(policy: str, input_: dict[str, Any], data: dict[str, Any]) -> Any:
    """What RegoEngine.allow should say: True, "error", or False for anything else."""
    try:
        fresh = _fresh(policy, input_, data)
    except Exception:  # noqa: BLE001 - regorus refuses the data itself
        return "error"
    return fresh if fresh in (True, "error") else False


def _outcome(decision: Any) -> Any:
    if decision.allowed:
        return True
    if decision.reason.startswith("evaluation failed"):
        return "error"
    return False


@settings(max_examples=150, deadline=None)
@given(STEPS)
def test_kept_engines_decide_as_fresh_ones(
    steps: list[tuple[int, dict[str, Any], dict[str, Any]]],
) -> None:
    engine = RegoEngine(cache_size=3)  # small, so engines are also dropped and rebuilt
    for index, input_, data in steps:
        policy = POLICIES[index]
        got = _outcome(engine.allow(policy, input_=input_, data=data))
        assert got == _expected(policy, input_, data), (index, input_, data)


def test_no_claims_stay_in_a_kept_engine() -> None:
    engine = RegoEngine()
    data = {"plugin": "resource", "resource-path": ["a"], "query": {}}
    affirming = {"submods": {"cpu0": {"ear.status": "affirming"}}}
    assert engine.allow(DEFAULT_RESOURCE_POLICY, input_=affirming, data=data).allowed
    (kept,) = [
        e
        for (text, data_json), e in _decisions().items()
        if text == DEFAULT_RESOURCE_POLICY and b'"resource-path":["a"]' in data_json
    ]
    (result,) = kept.eval_query("input")["result"]
    assert result["expressions"][0]["value"] == {}
    # And an empty input decides as a fresh engine does: no appraisal, no release.
    assert not engine.allow(DEFAULT_RESOURCE_POLICY, input_={}, data=data).allowed


def test_kept_engines_are_per_thread() -> None:
    engine = RegoEngine()
    data = {"plugin": "resource", "resource-path": ["a"], "query": {}}
    results: list[bool] = []

    def decide() -> None:
        affirming = {"submods": {"cpu0": {"ear.status": "affirming"}}}
        results.append(engine.allow(DEFAULT_RESOURCE_POLICY, input_=affirming, data=data).allowed)

    threads = [threading.Thread(target=decide) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 4


@pytest.mark.parametrize("data", [{"plugin": object()}, {"query": {"x": float("nan")}}])
def test_data_that_is_not_json_decides_as_on_a_fresh_engine(data: dict[str, Any]) -> None:
    policy = SAMPLE_RESOURCE_POLICIES["allow_all"]
    assert _outcome(RegoEngine().allow(policy, input_={}, data=data)) == _expected(policy, {}, data)


def _decisions() -> dict[tuple[str, str], Any]:
    from policy import engine as module  # noqa: PLC0415

    return dict(getattr(module._THREAD_TEMPLATES, "decisions", {}))


# --------------------------------------------------------------------------- memo
# RegoEngine.allow(..., input_key=k) remembers decisions of pure policies.

IMPURE = "package policy\nallow if time.now_ns() > 0\n"


def _key(input_: dict[str, Any]) -> str:
    """A name equal only for equal inputs, as the caller's contract asks."""
    return json.dumps(input_, sort_keys=True)


@settings(max_examples=150, deadline=None)
@given(STEPS)
def test_remembered_decisions_are_those_of_fresh_engines(
    steps: list[tuple[int, dict[str, Any], dict[str, Any]]],
) -> None:
    # A memo of 4, so that entries are also evicted and decided again.
    engine = RegoEngine(cache_size=3, decision_memo_size=4)
    for index, input_, data in steps + steps:  # every question at least twice
        policy = POLICIES[index]
        decision = engine.allow(policy, input_=input_, data=data, input_key=_key(input_))
        assert _outcome(decision) == _expected(policy, input_, data), (index, input_, data)


class _Counting(RegoEngine):
    """Counts the evaluations that actually ran."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.evaluations = 0

    def _decide(self, *args: Any, **kwargs: Any) -> Any:
        self.evaluations += 1
        return super()._decide(*args, **kwargs)


AFFIRMING = {"submods": {"cpu0": {"ear.status": "affirming"}}}
DATA_A = {"plugin": "resource", "resource-path": ["a", "b", "c"], "query": {}}


def test_the_same_question_is_answered_from_memory() -> None:
    engine = _Counting()
    first = engine.allow(DEFAULT_RESOURCE_POLICY, input_=AFFIRMING, data=DATA_A, input_key="t1")
    again = engine.allow(DEFAULT_RESOURCE_POLICY, input_=AFFIRMING, data=DATA_A, input_key="t1")
    assert first.allowed
    assert again.allowed
    assert (first.remembered, again.remembered) == (False, True)
    assert again.policy_hash == first.policy_hash
    assert engine.evaluations == 1
    # Denials are remembered too.
    engine.allow(DEFAULT_RESOURCE_POLICY, input_={}, data=DATA_A, input_key="t2")
    denied = engine.allow(DEFAULT_RESOURCE_POLICY, input_={}, data=DATA_A, input_key="t2")
    assert not denied.allowed
    assert denied.remembered
    assert denied.reason == "allow is false"
    assert engine.evaluations == 2


def test_any_difference_is_evaluated_again() -> None:
    engine = _Counting()
    engine.allow(DEFAULT_RESOURCE_POLICY, input_=AFFIRMING, data=DATA_A, input_key="t1")
    # Another token, another path, another query, another policy text: each evaluated.
    engine.allow(DEFAULT_RESOURCE_POLICY, input_=AFFIRMING, data=DATA_A, input_key="t3")
    engine.allow(
        DEFAULT_RESOURCE_POLICY,
        input_=AFFIRMING,
        data={**DATA_A, "resource-path": ["a", "b", "d"]},
        input_key="t1",
    )
    engine.allow(
        DEFAULT_RESOURCE_POLICY,
        input_=AFFIRMING,
        data={**DATA_A, "query": {"v": "1"}},
        input_key="t1",
    )
    changed = engine.allow(
        SAMPLE_RESOURCE_POLICIES["deny_all"], input_=AFFIRMING, data=DATA_A, input_key="t1"
    )
    assert not changed.allowed
    assert not changed.remembered
    # Without a key, nothing is remembered or answered from memory.
    engine.allow(DEFAULT_RESOURCE_POLICY, input_=AFFIRMING, data=DATA_A)
    assert engine.evaluations == 6


def test_impure_policies_are_evaluated_every_time() -> None:
    engine = _Counting()
    for _ in range(3):
        decision = engine.allow(IMPURE, input_=AFFIRMING, data=DATA_A, input_key="t1")
        assert decision.allowed
        assert not decision.remembered
    assert engine.evaluations == 3


def test_failed_evaluations_are_not_remembered() -> None:
    engine = _Counting()
    policy = "package policy\nallow if input.svn + 1 > 0\n"
    for _ in range(2):
        decision = engine.allow(policy, input_={"svn": "x"}, data=DATA_A, input_key="t1")
        assert decision.reason.startswith("evaluation failed")
        assert not decision.remembered
    assert engine.evaluations == 2


@pytest.mark.parametrize(
    "data",
    [
        {"plugin": object()},
        {"query": {"x": float("nan")}},
        {"query": {1: "a"}},  # json.dumps would write the key as "1"
        {"query": {"x": 2**70}},
        {"query": {"x": {"y": True}}, "plugin": frozenset()},
    ],
)
def test_data_that_is_not_plain_json_is_never_remembered(data: dict[str, Any]) -> None:
    engine = _Counting()
    policy = SAMPLE_RESOURCE_POLICIES["allow_all"]
    for _ in range(2):
        assert not engine.allow(policy, input_={}, data=data, input_key="t1").remembered
    assert engine.evaluations == 2


def test_integer_and_string_keys_are_told_apart() -> None:
    """Data regorus sees differently never shares a kept engine or a memo entry."""
    policy = 'package policy\nallow if data.query["1"] == "a"\n'
    engine = RegoEngine()
    for key in ("t1", None):
        assert engine.allow(policy, input_={}, data={"query": {"1": "a"}}, input_key=key).allowed
        assert not engine.allow(policy, input_={}, data={"query": {1: "a"}}, input_key=key).allowed


def test_the_memo_is_bounded() -> None:
    engine = _Counting(decision_memo_size=2)
    for key in ("t1", "t2", "t3", "t1"):  # t1 was evicted by t3
        engine.allow(DEFAULT_RESOURCE_POLICY, input_=AFFIRMING, data=DATA_A, input_key=key)
    assert engine.evaluations == 4
    assert engine.allow(
        DEFAULT_RESOURCE_POLICY, input_=AFFIRMING, data=DATA_A, input_key="t3"
    ).remembered
    off = _Counting(decision_memo_size=0)
    for _ in range(2):
        off.allow(DEFAULT_RESOURCE_POLICY, input_=AFFIRMING, data=DATA_A, input_key="t1")
    assert off.evaluations == 2
    with pytest.raises(ValueError, match="decision_memo_size"):
        RegoEngine(decision_memo_size=-1)
