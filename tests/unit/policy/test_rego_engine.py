# SPDX-License-Identifier: Apache-2.0
"""RegoEngine: parsing, the allow contract, the appraisal contract, values, caching, threads."""

from __future__ import annotations

import re
import threading

import pytest
import regorus
from policy_testdata import ASSETS, RESOURCE_DATA, appraisal_claims, token_claims

from policy import (
    TRUST_CLAIM_NAMES,
    Extension,
    PolicyEngine,
    PolicyEvaluationError,
    PolicyInvalidError,
    RegoEngine,
    policy_hash,
)
from policy import engine as engine_module
from policy.engine import MAX_POLICY_BYTES


def _claims_policy(body: str) -> str:
    return f"package policy\n\nimport rego.v1\n\n{body}\n"


def _asset(name: str) -> str:
    return (ASSETS / name).read_text()


def test_rego_engine_satisfies_the_protocol():
    engine: PolicyEngine = RegoEngine()
    assert isinstance(engine, RegoEngine)


# ---------------------------------------------------------------------------- validate


def test_validate_accepts_trustee_mixed_style(engine):
    engine.validate("package policy\n\ndefault allow = false\n\nallow if {\n\ttrue\n}\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("package policy\nallow if {", r"policy\.rego:2:11: expecting expression"),
        ("package policy\nallow { true }", r"policy\.rego:2:7: `if` keyword is required"),
        ("", "Missing package declaration"),
        ("package policy\nx := \n", "policy.rego:3"),
        ("package other\nallow := true\n", "must declare `package policy`"),
        ("package policy.sub\nallow := true\n", "must declare `package policy`"),
        ('package policy\nx := "' + "a" * 2000 + '"\n', "maximum column width of 1024"),
    ],
)
def test_validate_rejects_with_short_message(engine, text, message):
    with pytest.raises(PolicyInvalidError, match=message) as info:
        engine.validate(text)
    text_of_error = str(info.value)
    assert "\n" not in text_of_error
    assert "backtrace" not in text_of_error.lower()
    assert len(text_of_error) <= 300


def test_validate_rejects_oversized_policy(engine):
    text = "package policy\n" + "#" * MAX_POLICY_BYTES
    with pytest.raises(PolicyInvalidError, match="larger than"):
        engine.validate(text)


def test_validate_rejects_non_text(engine):
    with pytest.raises(PolicyInvalidError, match="must be text"):
        engine.validate(b"package policy")  # type: ignore[arg-type]


def test_invalid_policy_raises_from_allow_and_appraise(engine):
    with pytest.raises(PolicyInvalidError):
        engine.allow("package policy\nallow if {", input_={}, data=RESOURCE_DATA)
    with pytest.raises(PolicyInvalidError):
        engine.appraise("package policy\nallow if {", input_={}, reference_values={})


# ------------------------------------------------------------------------------- allow


def test_allow_true(engine):
    decision = engine.allow(_claims_policy("allow := true"), input_={}, data=RESOURCE_DATA)
    assert decision.allowed
    assert decision.reason == ""
    assert decision.policy_hash == policy_hash(_claims_policy("allow := true"))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("x := 1", "allow is undefined"),  # rule missing entirely
        ("allow if input.nope", "allow is undefined"),  # rule exists, undefined for input
        ("allow := false", "allow is false"),
        ('allow := "true"', "allow is a string, not true"),
        ("allow := 1", "allow is a number, not true"),
        ("allow := null", "allow is null, not true"),
        ("allow := [true]", "allow is an array, not true"),
        ('allow := {"ok": true}', "allow is an object, not true"),
        ("allow contains 1 if true", "allow is an array, not true"),  # a set
    ],
)
def test_allow_denies_anything_but_literal_true(engine, body, reason):
    decision = engine.allow(_claims_policy(body), input_={}, data=RESOURCE_DATA)
    assert not decision.allowed
    assert decision.reason == reason


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('allow if { 1 + "a" > 0 }', r"evaluation failed: .*policy\.rego:\d+:\d+"),
        ("allow := true\nallow := false", "evaluation failed"),  # conflicting outputs
        ('allow if query_reference_value("x")', "could not find function"),
        ("allow if { x := input.n / 0; x > 1 }", "evaluation failed"),
    ],
)
def test_allow_denies_on_evaluation_error(engine, body, reason):
    decision = engine.allow(_claims_policy(body), input_={"n": 1}, data=RESOURCE_DATA)
    assert not decision.allowed
    assert decision.reason
    assert re.search(reason, decision.reason), decision.reason
    assert "\n" not in decision.reason


def test_allow_rejects_data_that_would_override_the_policy(engine):
    # Regorus merges data into the document tree: data.policy.allow would win.
    policy = _claims_policy("default allow := false")
    decision = engine.allow(policy, input_={}, data={"policy": {"allow": True}})
    assert not decision.allowed
    assert "policy" in decision.reason


def test_allow_denies_non_mapping_input(engine):
    policy = _claims_policy("allow := true")
    decision = engine.allow(policy, input_=[1], data={})  # type: ignore[arg-type]
    assert not decision.allowed
    assert "input must be an object" in decision.reason


def test_allow_reads_data_and_input(engine):
    policy = _claims_policy(
        "allow if {\n"
        ' data.plugin == "resource"\n'
        ' input.submods.cpu0["ear.status"] == "affirming"\n'
        "}"
    )
    good = token_claims(cpu0=appraisal_claims("affirming"))
    assert engine.allow(policy, input_=good, data=RESOURCE_DATA).allowed
    other_plugin = {**RESOURCE_DATA, "plugin": "nebula"}
    assert not engine.allow(policy, input_=good, data=other_plugin).allowed


def test_python_bool_round_trips_as_json_boolean(engine):
    policy = _claims_policy(
        "allow if {\n input.flag == true\n input.off == false\n data.q.debug == false\n}"
    )
    assert engine.allow(
        policy, input_={"flag": True, "off": False}, data={"q": {"debug": False}}
    ).allowed
    # A number is not a boolean in Rego: 0 must not pass as false.
    assert not engine.allow(
        policy, input_={"flag": True, "off": 0}, data={"q": {"debug": False}}
    ).allowed


# --------------------------------------------------------------- Trustee-style assets


@pytest.mark.parametrize(
    ("tee", "plugin", "allowed"),
    [("tdx", "resource", True), ("sample", "resource", False), ("tdx", "other", False)],
)
def test_asset_mixed_style_no_sample(engine, tee, plugin, allowed):
    policy = _asset("mixed_style_no_sample.rego")
    claims = token_claims(cpu0=appraisal_claims("warning", tee=tee))
    decision = engine.allow(policy, input_=claims, data={**RESOURCE_DATA, "plugin": plugin})
    assert decision.allowed is allowed


@pytest.mark.parametrize(
    ("path", "status", "tee", "allowed"),
    [
        (["team-a", "key", "1"], "affirming", "tdx", True),
        (["team-b", "key", "1"], "affirming", "tdx", False),
        (["team-a", "key"], "affirming", "tdx", False),
        (["team-a", "key", "1"], "warning", "tdx", False),
        (["team-a", "key", "1"], "affirming", "snp", False),
    ],
)
def test_asset_mixed_style_path_rule(engine, path, status, tee, allowed):
    policy = _asset("mixed_style_path_rule.rego")
    claims = token_claims(cpu0=appraisal_claims(status, tee=tee))
    data = {**RESOURCE_DATA, "resource-path": path}
    assert engine.allow(policy, input_=claims, data=data).allowed is allowed


def test_asset_indented_allow_true(engine):
    assert engine.allow(_asset("indented_allow_true.rego"), input_={}, data={}).allowed


@pytest.mark.parametrize(
    ("secret", "svn", "allowed"),
    [
        ("db-password", "2", True),
        ("db-password", "1", False),
        ("tls-key", "2", False),
        ("tls-key", "3", True),
        ("unknown", "9", False),
    ],
)
def test_asset_v1_min_svn_table(engine, secret, svn, allowed):
    policy = _asset("v1_min_svn_table.rego")
    claims = token_claims(
        cpu0={
            "ear.status": "affirming",
            "ear.veraison.annotated-evidence": {"sample": {"svn": svn}},
        }
    )
    data = {**RESOURCE_DATA, "resource-path": ["shared", "secret", secret]}
    assert engine.allow(policy, input_=claims, data=data).allowed is allowed


def test_asset_future_keywords_attestation_policy(engine):
    policy = _asset("future_keywords_trust_claims.rego")
    ok = engine.appraise(policy, input_={"sample": {"svn": "1"}}, reference_values={"svn": ["1"]})
    assert ok.trust_vector["hardware"] == 2
    assert ok.status == "affirming"
    bad = engine.appraise(policy, input_={"sample": {"svn": "0"}}, reference_values={"svn": ["1"]})
    assert bad.status == "contraindicated"


# ---------------------------------------------------------------------------- appraise


def test_appraise_fills_missing_claims_with_zero(engine):
    appraisal = engine.appraise(
        _claims_policy('trust_claims := {"hardware": 2, "executables": 3}'),
        input_={},
        reference_values={},
    )
    assert list(appraisal.trust_vector) == list(TRUST_CLAIM_NAMES)
    assert appraisal.trust_vector == {
        **dict.fromkeys(TRUST_CLAIM_NAMES, 0),
        "hardware": 2,
        "executables": 3,
    }
    assert appraisal.status == "affirming"
    assert appraisal.extensions == ()


@pytest.mark.parametrize(
    "body",
    [
        "x := 1",  # no trust_claims rule at all
        'trust_claims := {"hardware": 2} if input.never',  # defined, undefined for input
    ],
)
def test_appraise_undefined_trust_claims_sets_every_claim_to_zero(engine, body):
    appraisal = engine.appraise(_claims_policy(body), input_={}, reference_values={})
    assert appraisal.trust_vector == dict.fromkeys(TRUST_CLAIM_NAMES, 0)
    assert appraisal.status == "none"


def test_appraise_explicit_zero_counts_as_set(engine):
    appraisal = engine.appraise(
        _claims_policy('trust_claims := {"hardware": 0}'), input_={}, reference_values={}
    )
    assert appraisal.status == "none"


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ("{}", "at least one claim"),
        ("null", "trust_claims is null, not an object"),
        ("[2]", "trust_claims is an array"),
        ('"affirming"', "trust_claims is a string"),
        ('{"hardware": true}', "hardware is a boolean, not an integer"),
        ('{"hardware": false}', "hardware is a boolean, not an integer"),
        ('{"hardware": 2.5}', "hardware is a number, not an integer"),
        ('{"hardware": "2"}', "hardware is a string, not an integer"),
        ('{"hardware": null}', "hardware is null, not an integer"),
        ('{"hardware": 128}', r"outside -128\.\.127"),
        ('{"hardware": -129}', r"outside -128\.\.127"),
        ('{"hardware": 200}', r"outside -128\.\.127"),  # Trustee would wrap it to -56
        ('{"firmware": 2}', "unknown claim 'firmware'"),
        ('{"Hardware": 2}', "unknown claim 'Hardware'"),
    ],
)
def test_appraise_rejects_ill_typed_trust_claims(engine, claims, message):
    with pytest.raises(PolicyEvaluationError, match=message):
        engine.appraise(_claims_policy(f"trust_claims := {claims}"), input_={}, reference_values={})


def test_appraise_accepts_claim_range_edges(engine):
    appraisal = engine.appraise(
        _claims_policy('trust_claims := {"hardware": -128, "executables": 127}'),
        input_={},
        reference_values={},
    )
    assert appraisal.trust_vector["hardware"] == -128
    assert appraisal.status == "contraindicated"


def test_appraise_evaluation_error_raises(engine):
    with pytest.raises(PolicyEvaluationError, match=r"trust_claims: policy\.rego"):
        engine.appraise(
            _claims_policy('trust_claims := {"hardware": 1 + "x"}'),
            input_={},
            reference_values={},
        )


def test_query_reference_value_returns_value_or_null(engine):
    policy = _claims_policy(
        "default hw := 97\n"
        'hw := 2 if query_reference_value("known") == [1, "a", true, null]\n'
        "default ex := 33\n"
        'ex := 3 if query_reference_value("missing") == null\n'
        'trust_claims := {"hardware": hw, "executables": ex}'
    )
    appraisal = engine.appraise(policy, input_={}, reference_values={"known": [1, "a", True, None]})
    assert appraisal.trust_vector["hardware"] == 2
    assert appraisal.trust_vector["executables"] == 3


def test_query_reference_value_needs_a_string(engine):
    policy = _claims_policy('trust_claims := {"hardware": 2} if query_reference_value(1)')
    with pytest.raises(PolicyEvaluationError, match="string id"):
        engine.appraise(policy, input_={}, reference_values={"1": 1})


def test_query_reference_value_uses_this_calls_values(engine):
    policy = _claims_policy(
        'trust_claims := {"hardware": 2} if { "x" in query_reference_value("ids") }'
    )
    first = engine.appraise(policy, input_={}, reference_values={"ids": ["x"]})
    second = engine.appraise(policy, input_={}, reference_values={"ids": ["y"]})
    third = engine.appraise(policy, input_={}, reference_values={"ids": ["x"]})
    assert (first.status, second.status, third.status) == ("affirming", "none", "affirming")


def test_appraise_extensions(engine):
    policy = _claims_policy(
        'trust_claims := {"hardware": 2}\n'
        "extensions := [\n"
        '  {"name": "ear.trustee.identifiers", "key": -18, "value": {"validated": {}}},\n'
        '  {"name": "x.dropped", "key": 7, "value": null},\n'
        '  {"name": "x.set", "key": 8, "value": {"b", "a"}, "extra": 1},\n'
        "]"
    )
    appraisal = engine.appraise(policy, input_={}, reference_values={})
    assert appraisal.extensions == (
        Extension(name="ear.trustee.identifiers", key=-18, value={"validated": {}}),
        Extension(name="x.set", key=8, value=["a", "b"]),
    )


@pytest.mark.parametrize(
    ("extensions", "message"),
    [
        ('{"name": "a"}', "extensions is an object, not an array"),
        ('"a"', "extensions is a string"),
        ("[1]", r"extensions\[0\] must be an object"),
        ('[{"name": "a", "key": 1}]', "must be an object with name, key and value"),
        ('[{"name": "", "key": 1, "value": 1}]', r"extensions\[0\]\.name"),
        ('[{"name": 3, "key": 1, "value": 1}]', r"extensions\[0\]\.name"),
        ('[{"name": "a", "key": "1", "value": 1}]', r"extensions\[0\]\.key must be an integer"),
        ('[{"name": "a", "key": true, "value": 1}]', r"key must be an integer"),
        ('[{"name": "a", "key": 1.5, "value": 1}]', r"key must be an integer"),
        ('[{"name": "a", "key": 2147483648, "value": 1}]', "32-bit"),
        ('[{"name": "ear.status", "key": 1, "value": "affirming"}]', "reserves"),
        ('[{"name": "a", "key": 1000, "value": 1}]', "reserves"),
        (
            '[{"name": "a", "key": 1, "value": 1}, {"name": "a", "key": 2, "value": 1}]',
            r"extensions\[1\] repeats",
        ),
        (
            '[{"name": "a", "key": 1, "value": 1}, {"name": "b", "key": 1, "value": 1}]',
            r"extensions\[1\] repeats",
        ),
    ],
)
def test_appraise_rejects_bad_extensions(engine, extensions, message):
    policy = _claims_policy(f'trust_claims := {{"hardware": 2}}\nextensions := {extensions}')
    with pytest.raises(PolicyEvaluationError, match=message):
        engine.appraise(policy, input_={}, reference_values={})


# ---------------------------------------------------------------------- evaluate_rules


def test_evaluate_rules_returns_defined_rules_only(engine):
    policy = _claims_policy(
        'a := {"z", "b", 3, true, null, [1]}\nb := input.x\nc := null\nd if input.never'
    )
    result = engine.evaluate_rules(
        policy,
        ["data.policy.a", "data.policy.b", "data.policy.c", "data.policy.d", "data.policy.e"],
        input_={"x": {"k": [1, 2]}},
    )
    assert result == {
        "data.policy.a": [None, True, 3, "b", "z", [1]],
        "data.policy.b": {"k": [1, 2]},
        "data.policy.c": None,
    }


def test_evaluate_rules_registers_reference_values_only_when_given(engine):
    policy = _claims_policy('v := query_reference_value("a")')
    assert engine.evaluate_rules(
        policy, ["data.policy.v"], input_={}, reference_values={"a": 5}
    ) == {"data.policy.v": 5}
    with pytest.raises(PolicyEvaluationError, match="could not find function"):
        engine.evaluate_rules(policy, ["data.policy.v"], input_={})


def test_evaluate_rules_with_data(engine):
    policy = _claims_policy('p := data.plugin\nr := data["resource-path"][2]')
    result = engine.evaluate_rules(
        policy, ["data.policy.p", "data.policy.r"], input_={}, data=RESOURCE_DATA
    )
    assert result == {"data.policy.p": "resource", "data.policy.r": "1"}


# ---------------------------------------------------------------------- cache, threads


def test_cache_is_bounded_and_reused():
    engine = RegoEngine(cache_size=2)
    policies = [_claims_policy(f"allow := {i} == {i}") for i in range(3)]
    for text in policies:
        assert engine.allow(text, input_={}, data={}).allowed
    cache = engine._templates()
    assert len(cache) == 2
    assert list(cache) == [policies[1], policies[2]]
    assert [digest for _, digest in cache.values()] == [policy_hash(p) for p in policies[1:]]
    template = cache[policies[2]]
    # An equal text (another string object, as read from the database) reuses it.
    assert engine.allow("".join(policies[2]), input_={}, data={}).policy_hash == template[1]
    assert cache[policies[2]] is template


def test_cache_size_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        RegoEngine(cache_size=0)


def test_evaluations_do_not_leak_into_each_other(engine):
    policy = _claims_policy("allow if data.flag == true")
    assert engine.allow(policy, input_={}, data={"flag": True}).allowed
    # A clone per evaluation: the previous call's data is gone.
    assert not engine.allow(policy, input_={}, data={}).allowed


def test_engine_shared_between_threads():
    engine = RegoEngine()
    policy = _asset("mixed_style_no_sample.rego")
    claims = token_claims(cpu0=appraisal_claims("affirming"))
    engine.allow(policy, input_=claims, data=RESOURCE_DATA)  # warm this thread's cache
    results: list[bool] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.extend(
                engine.allow(policy, input_=claims, data=RESOURCE_DATA).allowed for _ in range(50)
            )
        except BaseException as exc:  # noqa: BLE001 - PanicException is a BaseException
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [True] * 100
    assert engine.allow(policy, input_=claims, data=RESOURCE_DATA).allowed


def test_regorus_engine_is_not_shareable_which_is_why_the_cache_is_per_thread():
    # Documents the hazard the per-thread cache exists for.
    raw = regorus.Engine()
    raw.add_policy("p.rego", "package policy\nallow := true\n")
    caught: list[str] = []

    def worker() -> None:
        try:
            raw.eval_rule("data.policy.allow")
        except BaseException as exc:  # noqa: BLE001 - PanicException is a BaseException
            caught.append(type(exc).__name__)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert caught == ["PanicException"]


# ------------------------------------------------------------ failure paths and values


def test_policy_with_lone_surrogate_is_invalid(engine):
    with pytest.raises(PolicyInvalidError, match="not valid unicode"):
        engine.validate("package policy\n# \ud800\n")


def test_allow_denies_non_mapping_data(engine):
    decision = engine.allow(_claims_policy("allow := true"), input_={}, data=[1])  # type: ignore[arg-type]
    assert not decision.allowed
    assert "data must be an object" in decision.reason


def test_sets_become_sorted_lists(engine):
    policy = _claims_policy(
        's := {"b", 3, true, null, false, 1.5, "a"}\n'
        'o := {{"k": 2}, {"k": 1}}\n'
        "n := [{2, 1}]\n"
        "ss := {{3}, {2, 1}}"
    )
    result = engine.evaluate_rules(
        policy, ["data.policy.s", "data.policy.o", "data.policy.n", "data.policy.ss"], input_={}
    )
    assert result == {
        "data.policy.s": [None, False, True, 1.5, 3, "a", "b"],
        "data.policy.o": [{"k": 1}, {"k": 2}],
        "data.policy.n": [[1, 2]],
        "data.policy.ss": [[1, 2], [3]],
    }


class PanicException(BaseException):
    """Stands in for pyo3_runtime.PanicException (not importable by name)."""


class _FakeEngine:
    def __init__(self, *, clone_error=None, eval_error=None, value=None):
        self._clone_error = clone_error
        self._eval_error = eval_error
        self._value = value

    def clone(self):
        if self._clone_error is not None:
            raise self._clone_error
        return self

    def set_input(self, value):
        pass

    def eval_rule(self, _rule):
        if self._eval_error is not None:
            raise self._eval_error
        return self._value

    def eval_rule_as_json(self, _rule):
        return '"<undefined>"'


def _evaluate(engine, fake):
    return engine._evaluate(fake, ("data.policy.x",), input_={}, data=None, reference_values=None)


def test_rust_panic_during_clone_becomes_evaluation_error(engine):
    with pytest.raises(PolicyEvaluationError, match="the rego engine failed"):
        _evaluate(engine, _FakeEngine(clone_error=PanicException("boom")))


def test_rust_panic_during_eval_becomes_evaluation_error(engine):
    with pytest.raises(PolicyEvaluationError, match=r"data\.policy\.x: the rego engine failed"):
        _evaluate(engine, _FakeEngine(eval_error=PanicException("boom")))


def test_other_base_exceptions_propagate(engine):
    with pytest.raises(KeyboardInterrupt):
        _evaluate(engine, _FakeEngine(clone_error=KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        _evaluate(engine, _FakeEngine(eval_error=KeyboardInterrupt()))


def test_other_base_exceptions_propagate_from_parsing(engine, monkeypatch):
    class _InterruptedEngine:
        def set_rego_v0(self, _enable):
            raise KeyboardInterrupt

    monkeypatch.setattr("policy.engine.regorus.Engine", _InterruptedEngine)
    with pytest.raises(KeyboardInterrupt):
        engine.validate("package policy\n")


def test_unexpected_engine_exception_becomes_evaluation_error(engine):
    with pytest.raises(PolicyEvaluationError, match=r"data\.policy\.x: ValueError"):
        _evaluate(engine, _FakeEngine(eval_error=ValueError("")))
    with pytest.raises(PolicyEvaluationError, match=r"evaluation: bad clone"):
        _evaluate(engine, _FakeEngine(clone_error=OSError("bad clone")))


def test_unconvertible_undefined_value_is_absent(engine):
    assert _evaluate(engine, _FakeEngine(eval_error=TypeError("unhashable type: 'list'"))) == {}


def test_rust_panic_while_parsing_becomes_invalid_policy(engine, monkeypatch):
    class _PanickingEngine:
        def set_rego_v0(self, enable):
            pass

        def set_policy_length_config(self, **limits):
            pass

        def add_policy(self, _path, _text):
            raise PanicException("boom")

    monkeypatch.setattr("policy.engine.regorus.Engine", _PanickingEngine)
    with pytest.raises(PolicyInvalidError, match="the rego parser failed"):
        engine.validate("package policy\n")


def test_extension_value_must_be_json():
    with pytest.raises(PolicyEvaluationError, match=r"value is not JSON"):
        engine_module._extension("extensions[0]", {"name": "a", "key": 1, "value": float("nan")})


def test_undefined_marker_repr():
    assert repr(engine_module._UNDEFINED) == "<undefined>"
