# SPDX-License-Identifier: Apache-2.0
"""Release decisions on a kept engine give what a fresh clone of the policy gives.

RegoEngine.allow keeps one engine per (policy, data) and only swaps the input; these
tests run random sequences of decisions through it and compare each one with an
evaluation on a brand-new regorus engine.
"""

from __future__ import annotations

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


def _outcome(decision: Any) -> Any:
    if decision.allowed:
        return True
    if decision.reason.startswith("evaluation failed"):
        return "error"
    return False


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(POLICIES) - 1), INPUTS, DATA), min_size=1, max_size=25)
)
def test_kept_engines_decide_as_fresh_ones(
    steps: list[tuple[int, dict[str, Any], dict[str, Any]]],
) -> None:
    engine = RegoEngine(cache_size=3)  # small, so engines are also dropped and rebuilt
    for index, input_, data in steps:
        policy = POLICIES[index]
        expected = _fresh(policy, input_, data)
        expected = expected if expected in (True, "error") else False
        got = _outcome(engine.allow(policy, input_=input_, data=data))
        assert got == expected, (index, input_, data)


def test_no_claims_stay_in_a_kept_engine() -> None:
    engine = RegoEngine()
    data = {"plugin": "resource", "resource-path": ["a"], "query": {}}
    affirming = {"submods": {"cpu0": {"ear.status": "affirming"}}}
    assert engine.allow(DEFAULT_RESOURCE_POLICY, input_=affirming, data=data).allowed
    (kept,) = [
        e
        for (text, data_json), e in _decisions().items()
        if text == DEFAULT_RESOURCE_POLICY and '"resource-path":["a"]' in data_json
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
    try:
        expected = _fresh(policy, {}, data)
    except Exception:  # noqa: BLE001 - regorus refuses the data itself
        expected = "error"
    expected = expected if expected in (True, "error") else False
    assert _outcome(RegoEngine().allow(policy, input_={}, data=data)) == expected


def _decisions() -> dict[tuple[str, str], Any]:
    from policy import engine as module  # noqa: PLC0415

    return dict(getattr(module._THREAD_TEMPLATES, "decisions", {}))
