# SPDX-License-Identifier: Apache-2.0
"""policy/purity.py: which policies may have their release decisions remembered."""

from __future__ import annotations

import pytest
import regorus

from policy.defaults import DEFAULT_RESOURCE_POLICY, SAMPLE_RESOURCE_POLICIES
from policy.purity import IMPURE_BUILTINS, is_pure

#: Every builtin of the locked regorus that computes its result from its arguments alone.
_PURE_WORDS = """
__builtin_sets.intersection __builtin_sets.union abs array.concat array.reverse
array.slice base64.decode base64.encode base64.is_valid base64url.decode
base64url.encode base64url.encode_no_pad bits.and bits.lsh bits.negate bits.or bits.rsh
bits.xor ceil concat contains count endswith floor format_int glob.match glob.quote_meta
graph.reachable graph.reachable_paths hex.decode hex.encode indexof indexof_n
intersection is_array is_boolean is_null is_number is_object is_set is_string
json.filter json.is_valid json.marshal json.marshal_with_options json.match_schema
json.patch json.remove json.unmarshal json.verify_schema lower max min net.cidr_contains
net.cidr_expand net.cidr_is_valid numbers.range numbers.range_step object.filter
object.get object.keys object.remove object.subset object.union object.union_n
opa.runtime product regex.find_all_string_submatch_n regex.find_n regex.is_valid
regex.match regex.replace regex.split regex.template_match replace round semver.compare
semver.is_valid sort split sprintf startswith strings.any_prefix_match
strings.any_suffix_match strings.count strings.replace_n strings.reverse substring sum
time.add_date time.clock time.date time.diff time.format time.parse_duration_ns
time.parse_ns time.parse_rfc3339_ns time.weekday to_number trace trim trim_left
trim_prefix trim_right trim_space trim_suffix type_name union units.parse
units.parse_bytes upper urlquery.decode urlquery.decode_object urlquery.encode
urlquery.encode_object uuid.parse walk yaml.is_valid yaml.marshal yaml.unmarshal
"""
PURE_BUILTINS = frozenset(_PURE_WORDS.split())


def _engine(text: str) -> regorus.Engine:
    engine = regorus.Engine()
    engine.add_policy("policy.rego", text)
    return engine


def _builtins() -> set[str]:
    engine = _engine("package p\nx := opa.runtime()\n")
    (result,) = engine.eval_query("data.p.x")["result"]
    return set(result["expressions"][0]["value"]["builtins"])


def test_every_builtin_of_the_locked_regorus_is_classified() -> None:
    """A regorus upgrade that adds a builtin fails here until purity.py classifies it."""
    builtins = _builtins()
    assert builtins - PURE_BUILTINS - IMPURE_BUILTINS == set(), "classify in policy/purity.py"
    assert IMPURE_BUILTINS.issubset(builtins)
    assert not PURE_BUILTINS & IMPURE_BUILTINS


@pytest.mark.parametrize(
    "body",
    [
        "allow if time.now_ns() > 0",
        'allow if time["now_ns"]() > 0',
        'allow if time["now\\u005fns"]() > 0',  # an escape in a string index
        'allow if rand.intn("seed", 10) >= 0',
        'allow if rand["intn"]("seed", 10) >= 0',
        'allow if uuid.rfc4122("x") != ""',
        'allow if http.send({"method": "get", "url": "http://127.0.0.1/"})',
        # In a user function, a comprehension, a `with` value, an else branch.
        "f(x) := time.now_ns() + x\nallow if f(1) > 0",
        "allow if count([t | some i in [1]; t := time.now_ns() + i]) == 1",
        "ok if input.t > 0\nallow if ok with input.t as time.now_ns()",
        "default v := 0\nv := 1 if input.x else := time.now_ns()\nallow if v > 0",
    ],
)
def test_policies_reading_the_clock_or_randomness_are_impure(body: str) -> None:
    assert not is_pure(_engine(f"package policy\n{body}\n"))


@pytest.mark.parametrize(
    "text",
    [
        DEFAULT_RESOURCE_POLICY,
        *SAMPLE_RESOURCE_POLICIES.values(),
        # Names in comments and strings are not calls; user functions and other
        # time builtins (arguments in, result out) are pure.
        'package policy\n# time.now_ns()\nallow if "time.now_ns" != input.x\n',
        "package policy\nf(x) := x + 1\nallow if { data.policy.f(1) == 2; f(1) == 2 }\n",
        "package policy\nallow if time.date(input.t)[0] > 2000\n",
        'package policy\nallow if time["date"](input.t)[0] > 2000\n',
        "package policy\nallow if regex.match(`^a`, input.s)\n",
    ],
)
def test_policies_that_compute_from_input_and_data_are_pure(text: str) -> None:
    assert is_pure(_engine(text))


class _Broken:
    def get_ast_as_json(self) -> str:
        raise RuntimeError("no syntax tree")


@pytest.mark.parametrize(
    "ast",
    [
        "not json",
        # A call whose function is not a chain of literal names.
        '[{"Call": {"fcn": {"Number": {"value": 1}}, "params": []}}]',
        (
            '[{"Call": {"fcn": {"RefBrack": {"refr": {"Var": {"value": "time"}}, '
            '"index": {"Var": {"value": "x"}}}}, "params": []}}]'
        ),
        '[{"Call": {"params": []}}]',
    ],
)
def test_unknown_syntax_trees_are_not_pure(ast: str) -> None:
    class Engine:
        def get_ast_as_json(self) -> str:
            return ast

    assert not is_pure(Engine())
    assert not is_pure(_Broken())
