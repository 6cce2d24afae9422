# SPDX-License-Identifier: Apache-2.0
"""policy.explain: which definition set a rule, which condition failed."""

from __future__ import annotations

import pytest

from policy.defaults import DEFAULT_ATTESTATION_POLICIES
from policy.engine import RegoEngine
from policy.errors import PolicyInvalidError
from policy.explain import rule_names, trace_rules

POLICY = """package policy

import rego.v1

# a comment with ünïcode before the rules (spans are byte offsets)
default allow := false

allow if {
	input.tee == "tdx"; input.debug == false
	# a comment between conditions
	input.svn >= 2
}

allow if {
	input.override == "81000000"
}

level := "high" if {
	input.svn >= 5
} else := "medium" if {
	input.svn >= 2
} else := "low"

names contains n if {
	some n in input.names
}

double(x) := x * 2

constant := 7
"""


@pytest.fixture(scope="module")
def engine() -> RegoEngine:
    return RegoEngine()


def test_rule_names_skip_functions(engine: RegoEngine) -> None:
    assert rule_names(POLICY) == ["allow", "level", "names", "constant"]


def test_the_failed_condition_of_each_body(engine: RegoEngine) -> None:
    traces = trace_rules(engine, POLICY, ["allow"], input_={"tee": "tdx", "debug": False, "svn": 1})
    allow = traces["allow"]
    assert (allow.defined, allow.value) == (True, False)
    assert (allow.set_by, allow.set_by_line) == ("default", 6)
    first, second = allow.bodies
    assert not first.holds
    assert first.failed is not None
    assert (first.failed.line, first.failed.text) == (11, "input.svn >= 2")
    assert second.failed is not None
    # The string literal is whole (regorus's statement span stops before the quote).
    assert second.failed.text == 'input.override == "81000000"'


def test_the_body_that_held(engine: RegoEngine) -> None:
    traces = trace_rules(engine, POLICY, ["allow"], input_={"override": "81000000"})
    allow = traces["allow"]
    assert (allow.value, allow.set_by, allow.set_by_line) == (True, "body", 14)
    assert [b.holds for b in allow.bodies] == [False, True]
    assert allow.to_json()["set_by"] == {"kind": "body", "line": 14}


@pytest.mark.parametrize(
    ("svn", "value", "line"),
    [(7, "high", 18), (3, "medium", 20), (0, "low", 22)],
)
def test_else_chains(engine: RegoEngine, svn: int, value: str, line: int) -> None:
    level = trace_rules(engine, POLICY, ["level"], input_={"svn": svn})["level"]
    assert level.value == value
    assert level.set_by_line == line
    assert [b.value for b in level.bodies] == ['"high"', '"medium"', '"low"']


def test_undefined_rules_and_untraceable_heads(engine: RegoEngine) -> None:
    traces = trace_rules(
        engine, POLICY, ["level", "names", "constant", "missing"], input_={"names": ["a"]}
    )
    assert traces["level"].value == "low"  # svn undefined: only the unconditional else
    assert traces["names"].value == ["a"]
    assert traces["names"].bodies == ()  # partial set rules: value only
    assert traces["constant"].to_json() == {
        "rule": "constant",
        "defined": True,
        "value": 7,
        "set_by": {"kind": "body", "line": 30},
        "bodies": [{"line": 30, "value": "7", "holds": True}],
    }
    assert traces["missing"].defined is False


def test_trust_claims_of_the_default_cpu_policy(engine: RegoEngine) -> None:
    text = DEFAULT_ATTESTATION_POLICIES["default_cpu"]
    evidence = {"sample": {"svn": "1", "launch_digest": "abcde", "debug": False}}
    traces = trace_rules(
        engine,
        text,
        ["executables", "hardware"],
        input_=evidence,
        reference_values={"launch_digest": ["abcde"], "svn": ["2"]},
    )
    assert traces["executables"].value == 3
    assert traces["executables"].set_by == "body"
    hardware = traces["hardware"]
    assert (hardware.value, hardware.set_by) == (97, "default")
    failed = [b.failed.text for b in hardware.bodies if b.failed is not None]
    assert 'input.sample.svn in query_reference_value("svn")' in failed


def test_a_policy_that_does_not_parse(engine: RegoEngine) -> None:
    with pytest.raises(PolicyInvalidError):
        rule_names("package policy\nallow if {")
