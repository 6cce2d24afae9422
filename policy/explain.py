# SPDX-License-Identifier: Apache-2.0
"""Why a policy decided what it did: which definition set each rule, which condition failed.

:func:`trace_rules` answers, for named rules of one policy and one input:

* the rule's value (or that it is undefined);
* which definition gave that value: the body that held (its line and value), or the
  ``default``;
* for every body of the rule, whether it held, and if not, the **first condition that
  failed** (its line and text).

How: the policy's syntax tree (regorus ``get_ast_as_json``) gives every body's statements
with their source spans. For each body and each statement ``k`` a probe rule
``kbs_explain_<n>_<k> if { <statements 1..k> }`` is appended to the policy text; all probes
are evaluated in one clone, with the same input, data and reference values. The first
undefined probe of a body names its failing statement. Probes live in the policy's own
package, so unqualified references to other rules and to ``input``/``data`` mean what they
mean in the policy. This costs one parse and one evaluation of the enlarged policy; it is
meant for explanations (the admin ``explain`` endpoint, denied requests), not for every
decision.

Functions and rules with reference heads (``x[k] := v``) are reported by value only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import regorus

from policy.engine import POLICY_PACKAGE, RegoEngine
from policy.errors import PolicyInvalidError

_logger = logging.getLogger(__name__)

__all__ = [
    "BodyTrace",
    "Condition",
    "RuleTrace",
    "failing_conditions",
    "rule_names",
    "trace_rules",
]

#: Probe rule names start with this (policies should not use it).
PROBE_PREFIX: Final = "kbs_explain_"
#: Longest statement text kept in a trace.
MAX_CONDITION_CHARS: Final = 240
#: Most probes one trace evaluates (a guard against huge policies).
MAX_PROBES: Final = 2000


@dataclass(frozen=True, slots=True)
class Condition:
    """One statement of a rule body."""

    line: int
    text: str
    #: The statement's source as written (comments included), for probes.
    source: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class BodyTrace:
    """One definition (body) of a rule and what became of it."""

    line: int
    #: The value this body gives the rule (source text), ``None`` for ``true``.
    value: str | None
    holds: bool
    #: The first condition that did not hold, when ``holds`` is false.
    failed: Condition | None = None
    is_else: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON form for explanations."""
        out: dict[str, Any] = {"line": self.line, "value": self.value, "holds": self.holds}
        if self.is_else:
            out["else"] = True
        if self.failed is not None:
            out["failed"] = {"line": self.failed.line, "condition": self.failed.text}
        return out


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """One rule's value and where it came from."""

    name: str
    defined: bool
    value: Any = None
    #: Line of the definition that set the value (a body, or the ``default``).
    set_by_line: int | None = None
    #: ``"body"`` or ``"default"`` (``None`` when undefined or not traceable).
    set_by: str | None = None
    bodies: tuple[BodyTrace, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """JSON form for explanations."""
        out: dict[str, Any] = {"rule": self.name, "defined": self.defined}
        if self.defined:
            out["value"] = self.value
        if self.set_by is not None:
            out["set_by"] = {"kind": self.set_by, "line": self.set_by_line}
        if self.bodies:
            out["bodies"] = [b.to_json() for b in self.bodies]
        return out


@dataclass(slots=True)
class _Body:
    line: int
    value: str | None
    is_else: bool
    statements: list[Condition]


@dataclass(slots=True)
class _Rule:
    name: str
    traceable: bool = True
    default_line: int | None = None
    #: Else chains, in source order; each a list of bodies tried in order.
    chains: list[list[_Body]] = field(default_factory=list)


def _parse(text: str) -> tuple[bytes, list[dict[str, Any]]]:
    try:
        engine = regorus.Engine()
        engine.set_rego_v0(False)
        engine.add_policy("policy.rego", text)
        tree = json.loads(engine.get_ast_as_json())
    except Exception as exc:
        raise PolicyInvalidError("policy does not parse") from exc
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        raise PolicyInvalidError("the rego parser failed") from exc
    source = str(tree[0]["source"]["contents"]).encode("utf-8")
    return source, list(tree[0]["ast"]["rules"])


def _display(raw: str) -> str:
    """One line of source for people: comment lines dropped, whitespace collapsed."""
    lines = [line for line in raw.splitlines() if not line.strip().startswith("#")]
    return " ".join(" ".join(lines).split())[:MAX_CONDITION_CHARS]


def _slice(source: bytes, start: int, end: int) -> str:
    return source[start:end].decode("utf-8", errors="replace")


def _statements(source: bytes, query: Mapping[str, Any]) -> list[Condition]:
    """The body's statements with their full text.

    Statement spans can stop short (regorus leaves the closing quote of a string literal
    outside), so each statement runs from its start to the next one's start, or to the
    closing brace of the body, minus trailing whitespace and ``;``.
    """
    stmts = query.get("stmts", [])
    starts = [int(stmt["span"]["start"]) for stmt in stmts]
    end_of_body = int(query["span"]["end"]) - 1  # the closing brace
    found = []
    for i, stmt in enumerate(stmts):
        end = starts[i + 1] if i + 1 < len(stmts) else end_of_body
        raw = _slice(source, starts[i], end).rstrip().rstrip(";").rstrip()
        found.append(Condition(int(stmt["span"]["line"]), _display(raw), raw))
    return found


def _var_name(refr: Any) -> str | None:
    if isinstance(refr, dict) and "Var" in refr:
        return str(refr["Var"]["value"])
    return None


def _rules(text: str) -> tuple[dict[str, _Rule], list[str]]:
    """Every rule of the policy by name, and the names in order of first definition."""
    source, nodes = _parse(text)
    rules: dict[str, _Rule] = {}
    order: list[str] = []

    def rule(name: str) -> _Rule:
        if name not in rules:
            rules[name] = _Rule(name)
            order.append(name)
        return rules[name]

    starts = [int(next(iter(node.values()))["span"]["start"]) for node in nodes]
    for index, node in enumerate(nodes):
        # Where this rule's text ends: the next rule's start (spans of literals stop short).
        next_start = starts[index + 1] if index + 1 < len(starts) else len(source)
        if "Default" in node:
            default = node["Default"]
            name = _var_name(default.get("refr"))
            if name is None:
                continue
            entry = rule(name)
            entry.default_line = int(default["span"]["line"])
            continue
        spec = node.get("Spec")
        if isinstance(spec, dict):
            _add_spec(source, spec, rule, next_start)
    return rules, order


def _add_spec(
    source: bytes, spec: Mapping[str, Any], rule: Callable[[str], _Rule], spec_end: int
) -> None:
    head = spec.get("head", {})
    kind = next(iter(head), None)
    details = head.get(kind, {}) if kind else {}
    name = _var_name(details.get("refr"))
    if kind == "Func" or name is None:
        return  # functions take arguments; reference heads are reported by value only
    entry = rule(name)
    if kind != "Compr":
        entry.traceable = False
        return
    bodies = spec.get("bodies", [])
    # The head's value ends where the first body (its "if") starts, else with the rule.
    head_end = int(bodies[0]["span"]["start"]) if bodies else spec_end
    head_value = _assigned(source, details.get("assign"), head_end)
    chain: list[_Body] = []
    for index, body in enumerate(bodies):
        value = head_value
        if body.get("is_else"):
            query = body.get("query") or {}
            if query.get("stmts"):
                end = int(query["span"]["start"])
            elif index + 1 < len(bodies):
                end = int(bodies[index + 1]["span"]["start"])
            else:
                end = spec_end
            value = _assigned(source, body.get("assign"), end)
        statements = _statements(source, body["query"]) if body.get("query") else []
        chain.append(_Body(int(body["span"]["line"]), value, bool(body.get("is_else")), statements))
    if not chain:
        # `name := value` without a body always holds.
        chain.append(_Body(int(spec["span"]["line"]), head_value, is_else=False, statements=[]))
    entry.chains.append(chain)


def _assigned(source: bytes, assign: Any, end: int) -> str | None:
    """The value text of ``:= value`` (``None``: the rule's value is ``true``).

    Spans of literals can stop short (see :func:`_statements`), so the text runs from
    the ``:=`` to ``end`` (the start of the body that follows), minus an ``if``.
    """
    if not isinstance(assign, dict):
        return None
    raw = _slice(source, int(assign["span"]["start"]), end).strip()
    raw = raw.removeprefix(":=").removeprefix("=").strip()
    raw = raw.removesuffix("{").rstrip().removesuffix("if").rstrip()
    return _display(raw)


def rule_names(text: str) -> list[str]:
    """The rules a policy defines (not functions, not probes), in source order.

    Raises:
        PolicyInvalidError: the text does not parse.
    """
    _, order = _rules(text)
    return [name for name in order if not name.startswith(PROBE_PREFIX)]


def _probes(rules: Sequence[_Rule]) -> Iterator[tuple[tuple[str, int, int, int], str]]:
    """``((rule, chain, body, k), probe text)`` for every statement prefix of every body."""
    counter = 0
    for rule in rules:
        for c, chain in enumerate(rule.chains):
            for b, body in enumerate(chain):
                for k in range(1, len(body.statements) + 1):
                    counter += 1
                    conditions = "\n\t".join(s.source for s in body.statements[:k])
                    yield (rule.name, c, b, k), f"{PROBE_PREFIX}{counter} if {{\n\t{conditions}\n}}"


def trace_rules(
    engine: RegoEngine,
    text: str,
    names: Sequence[str],
    *,
    input_: Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
    reference_values: Mapping[str, Any] | None = None,
) -> dict[str, RuleTrace]:
    """Trace the rules ``names`` of policy ``text`` for one input (see the module doc).

    Raises:
        PolicyInvalidError: the text does not parse.
        PolicyEvaluationError: evaluation failed.
    """
    rules, _ = _rules(text)
    wanted = [rules[name] for name in names if name in rules and rules[name].traceable]
    probes = list(_probes(wanted))[:MAX_PROBES]
    probe_paths = {
        key: f"{POLICY_PACKAGE}.{PROBE_PREFIX}{i + 1}" for i, (key, _) in enumerate(probes)
    }
    enlarged = text.rstrip("\n") + "\n\n" + "\n\n".join(probe for _, probe in probes) + "\n"
    paths = [f"{POLICY_PACKAGE}.{name}" for name in names] + list(probe_paths.values())
    try:
        values = engine.evaluate_rules(
            enlarged if probes else text,
            paths,
            input_=input_,
            data=data,
            reference_values=reference_values,
        )
    except PolicyInvalidError:
        # A body whose text does not stand alone (it should always): values only.
        _logger.warning("explain probes did not compile; reporting rule values only")
        values = engine.evaluate_rules(
            text,
            [f"{POLICY_PACKAGE}.{name}" for name in names],
            input_=input_,
            data=data,
            reference_values=reference_values,
        )
        probe_paths = {}
    out: dict[str, RuleTrace] = {}
    for name in names:
        path = f"{POLICY_PACKAGE}.{name}"
        defined = path in values
        rule = rules.get(name)
        if rule is None or not rule.traceable:
            out[name] = RuleTrace(name=name, defined=defined, value=values.get(path))
            continue
        out[name] = _trace(rule, defined, values.get(path), values, probe_paths)
    return out


def _body_trace(
    rule: _Rule,
    key: tuple[int, int],
    body: _Body,
    values: Mapping[str, Any],
    probe_paths: Mapping[tuple[str, int, int, int], str],
) -> BodyTrace:
    chain, index = key
    for k, statement in enumerate(body.statements, start=1):
        path = probe_paths.get((rule.name, chain, index, k))
        if path is None:
            # Not probed (too many probes): unknown, so not claimed to hold.
            return BodyTrace(body.line, body.value, holds=False, is_else=body.is_else)
        if path not in values:
            return BodyTrace(
                body.line, body.value, holds=False, failed=statement, is_else=body.is_else
            )
    return BodyTrace(body.line, body.value, holds=True, is_else=body.is_else)


def _trace(
    rule: _Rule,
    defined: bool,
    value: Any,
    values: Mapping[str, Any],
    probe_paths: Mapping[tuple[str, int, int, int], str],
) -> RuleTrace:
    traced: list[BodyTrace] = []
    set_by_line: int | None = None
    for c, chain in enumerate(rule.chains):
        chain_traces = [
            _body_trace(rule, (c, b), body, values, probe_paths) for b, body in enumerate(chain)
        ]
        traced.extend(chain_traces)
        # In an else chain the first body that holds decides; later ones do not count.
        first = next((t for t in chain_traces if t.holds), None)
        if first is not None and set_by_line is None:
            set_by_line = first.line
    bodies = tuple(traced)
    if not defined:
        return RuleTrace(name=rule.name, defined=False, bodies=bodies)
    set_by, line = None, None
    if set_by_line is not None:
        set_by, line = "body", set_by_line
    elif rule.default_line is not None:
        set_by, line = "default", rule.default_line
    return RuleTrace(
        name=rule.name, defined=True, value=value, set_by_line=line, set_by=set_by, bodies=bodies
    )


def failing_conditions(trace: RuleTrace) -> list[dict[str, Any]]:
    """The failed condition of every body of ``trace`` (for one-line summaries)."""
    return [
        {"line": b.failed.line, "condition": b.failed.text}
        for b in trace.bodies
        if b.failed is not None
    ]
