# SPDX-License-Identifier: Apache-2.0
"""The release decision for one resource request, and its explanation.

A resource is released when the global resource policy (Trustee's ``resource-policy``)
**and** every release policy whose pattern matches the path (kbs/release_policies.py)
evaluate ``allow`` to literally ``true``. All of them are evaluated, even after the first
denial, so that the audit record and the explanation name every policy that said no.

:func:`explain` adds, for the admin ``explain`` endpoint: the trace of every rule of every
policy involved (which definition set it, which condition failed; policy/explain.py), and
a fresh appraisal of each device in the token with the trust claim each rule set.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from kbs.release_policies import ReleasePolicy
from kbs.state import KbsState
from kbs.stores import ATTESTATION_NAMESPACE, RESOURCE_NAMESPACE
from policy.base import PolicyEngine
from policy.defaults import DEFAULT_RESOURCE_POLICY, DEFAULT_RESOURCE_POLICY_ID, policy_hash
from policy.ear import status_of
from policy.engine import RegoEngine
from policy.errors import PolicyError
from policy.explain import RuleTrace, rule_names, trace_rules
from storage_backends.base import ResourceDesc

_logger = logging.getLogger(__name__)

__all__ = ["PolicyOutcome", "ReleaseDecision", "decide", "explain", "release_data"]

_ALLOW: Final = "allow"
_DEVICE: Final = re.compile(r"([a-z]+)\d+")


@dataclass(frozen=True, slots=True)
class PolicyOutcome:
    """What one policy said about one request."""

    kind: str  # "global" | "release"
    policy_id: str  # "resource-policy", or the release policy's pattern
    sha384: str
    allowed: bool
    reason: str
    text: str = field(repr=False)
    release_kind: str | None = None  # "rego" | "allow_list" for release policies
    #: Filled by :meth:`ReleaseDecision.explain_denials`: the failed conditions.
    failing: tuple[str, ...] = ()
    #: The engine answered from its memo (``RegoEngine.allow``); not in records.
    remembered: bool = False

    def to_json(self) -> dict[str, Any]:
        """The outcome without the policy text (audit records, explanations)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "id": self.policy_id,
            "sha384": self.sha384,
            "allowed": self.allowed,
        }
        if self.release_kind is not None:
            out["policy_kind"] = self.release_kind
        if not self.allowed:
            out["reason"] = self.reason
        if self.failing:
            out["failing"] = list(self.failing)
        return out


@dataclass(frozen=True, slots=True)
class ReleaseDecision:
    """Every policy's outcome for one request; released only if all allow."""

    outcomes: tuple[PolicyOutcome, ...]
    data: Mapping[str, Any]

    @property
    def allowed(self) -> bool:
        """Whether every policy allowed."""
        return all(o.allowed for o in self.outcomes)

    def summary(self) -> str:
        """One line for the log: each policy's verdict and, for denials, what failed."""
        parts = []
        for outcome in self.outcomes:
            verdict = "allowed" if outcome.allowed else f"denied ({outcome.reason})"
            if outcome.failing:
                verdict += ": " + "; ".join(outcome.failing)
            parts.append(f"{outcome.kind} policy {outcome.policy_id} {verdict}")
        return ", ".join(parts)

    def explain_denials(self, engine: PolicyEngine, claims: Mapping[str, Any]) -> ReleaseDecision:
        """The same decision, with the failed conditions of each denying policy filled in."""
        if not isinstance(engine, RegoEngine):
            return self
        explained = []
        for outcome in self.outcomes:
            if outcome.allowed:
                explained.append(outcome)
                continue
            try:
                trace = trace_rules(engine, outcome.text, [_ALLOW], input_=claims, data=self.data)
            except PolicyError:
                _logger.debug("could not trace policy %s", outcome.policy_id, exc_info=True)
                explained.append(outcome)
                continue
            explained.append(_with_failing(outcome, trace[_ALLOW]))
        return ReleaseDecision(tuple(explained), self.data)


def _with_failing(outcome: PolicyOutcome, trace: RuleTrace) -> PolicyOutcome:
    failing = tuple(
        f"line {b.failed.line}: {b.failed.text}" for b in trace.bodies if b.failed is not None
    )
    return PolicyOutcome(
        kind=outcome.kind,
        policy_id=outcome.policy_id,
        sha384=outcome.sha384,
        allowed=outcome.allowed,
        reason=outcome.reason,
        text=outcome.text,
        release_kind=outcome.release_kind,
        failing=failing,
        remembered=outcome.remembered,
    )


def release_data(desc: ResourceDesc, query: Mapping[str, str]) -> dict[str, Any]:
    """The ``data`` document resource policies see (Trustee's)."""
    return {"plugin": "resource", "resource-path": list(desc.segments), "query": dict(query)}


async def _policies(
    state: KbsState, desc: ResourceDesc
) -> list[tuple[str, str, str, ReleasePolicy | None]]:
    text = await state.policies.get(RESOURCE_NAMESPACE, DEFAULT_RESOURCE_POLICY_ID)
    found: list[tuple[str, str, str, ReleasePolicy | None]] = [
        ("global", DEFAULT_RESOURCE_POLICY_ID, text or DEFAULT_RESOURCE_POLICY, None)
    ]
    found.extend(
        ("release", str(policy.prefix), policy.text, policy)
        for policy in await state.release_policies.matching(desc)
    )
    return found


async def decide(
    state: KbsState,
    desc: ResourceDesc,
    claims: Mapping[str, Any],
    query: Mapping[str, str],
    *,
    token_id: str | None = None,
) -> ReleaseDecision:
    """Evaluate the global resource policy and every matching release policy.

    ``token_id`` (the SHA-256 of the token ``claims`` were verified from) lets the engine
    answer a repeated question from memory (``RegoEngine.allow``'s ``input_key``): the
    same token, the same policy texts and the same path and query give the same answer.

    Raises:
        DatabaseUnavailableError: the policies could not be read.
        PolicyInvalidError: a stored policy does not parse (it was validated on upload).
    """
    data = release_data(desc, query)
    outcomes = []
    for kind, policy_id, text, policy in await _policies(state, desc):
        decision = state.policy_engine.allow(text, input_=claims, data=data, input_key=token_id)
        outcomes.append(
            PolicyOutcome(
                kind=kind,
                policy_id=policy_id,
                sha384=decision.policy_hash or policy_hash(text),  # the engine hashed it
                allowed=decision.allowed,
                reason=decision.reason,
                text=text,
                release_kind=policy.kind if policy is not None else None,
                remembered=decision.remembered,
            )
        )
    return ReleaseDecision(tuple(outcomes), data)


# --------------------------------------------------------------------------- explain


def _rule_traces(
    engine: RegoEngine,
    text: str,
    *,
    input_: Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
    reference_values: Mapping[str, Any] | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, RuleTrace]:
    wanted = list(names) if names is not None else rule_names(text)
    return trace_rules(
        engine, text, wanted, input_=input_, data=data, reference_values=reference_values
    )


def _failing(traces: Mapping[str, RuleTrace]) -> list[dict[str, Any]]:
    """Boolean rules that did not come out true, with the condition that failed."""
    found = []
    for trace in traces.values():
        if trace.defined and trace.value is not False:
            continue
        conditions = [
            {"line": b.failed.line, "condition": b.failed.text}
            for b in trace.bodies
            if b.failed is not None
        ]
        if trace.defined or conditions:
            found.append({"rule": trace.name, "value": trace.value, "failed": conditions})
    return found


async def _appraisals(
    state: KbsState, engine: RegoEngine, claims: Mapping[str, Any]
) -> dict[str, Any]:
    submods = claims.get("submods")
    if not isinstance(submods, dict):
        return {}
    reference_values = await state.reference_values.snapshot(at=state.clock.now())
    out: dict[str, Any] = {}
    for name, submod in submods.items():
        if not isinstance(submod, dict):
            continue
        annotated = submod.get("ear.veraison.annotated-evidence")
        match = _DEVICE.fullmatch(str(name))
        tee_class = match.group(1) if match else "cpu"
        policy_id = f"{submod.get('ear.appraisal-policy-id', 'default')}_{tee_class}"
        entry: dict[str, Any] = {
            "token_status": submod.get("ear.status"),
            "token_trust_vector": submod.get("ear.trustworthiness-vector"),
            "policy_id": policy_id,
        }
        text = await state.policies.get(ATTESTATION_NAMESPACE, policy_id)
        if text is None or not isinstance(annotated, dict):
            entry["error"] = "attestation policy or annotated evidence not available"
            out[str(name)] = entry
            continue
        try:
            appraisal = engine.appraise(text, input_=annotated, reference_values=reference_values)
            claim_rules = {claim: claim.replace("-", "_") for claim in appraisal.trust_vector}
            defined = set(rule_names(text))
            traces = _rule_traces(
                engine,
                text,
                input_=annotated,
                reference_values=reference_values,
                names=["trust_claims", *sorted({r for r in claim_rules.values() if r in defined})],
            )
        except PolicyError as exc:
            entry["error"] = f"appraisal failed: {exc}"
            out[str(name)] = entry
            continue
        vector = {}
        for claim, value in appraisal.trust_vector.items():
            trace = traces.get(claim_rules[claim]) or traces["trust_claims"]
            vector[claim] = {"value": value, "rule": trace.to_json()}
        entry.update(
            {
                "status": status_of(appraisal.trust_vector),
                "policy_sha384": appraisal.policy_hash,
                "trust_vector": vector,
                "input": annotated,
            }
        )
        out[str(name)] = entry
    return out


async def explain(
    state: KbsState,
    desc: ResourceDesc,
    claims: Mapping[str, Any],
    query: Mapping[str, str],
) -> dict[str, Any]:
    """Every policy's decision with rule traces, and each device's appraisal, as JSON.

    Raises:
        DatabaseUnavailableError: policies or reference values could not be read.
    """
    decision = await decide(state, desc, claims, query)
    engine = state.policy_engine
    policies = []
    for outcome in decision.outcomes:
        entry = outcome.to_json()
        if isinstance(engine, RegoEngine):
            try:
                traces = _rule_traces(engine, outcome.text, input_=claims, data=decision.data)
            except PolicyError as exc:
                entry["trace_error"] = str(exc)
            else:
                entry["rules"] = [t.to_json() for t in traces.values()]
                entry["failing_rules"] = _failing(traces) if not outcome.allowed else []
        policies.append(entry)
    return {
        "resource": str(desc),
        "decision": "allow" if decision.allowed else "deny",
        "policies": policies,
        "appraisals": (
            await _appraisals(state, engine, claims) if isinstance(engine, RegoEngine) else {}
        ),
        "input": claims,
        "data": decision.data,
    }
