# SPDX-License-Identifier: Apache-2.0
"""The built-in attestation service: verify evidence, appraise it, issue an EAR token.

Shared by the KBS ``/attest`` flow and the standalone attestation-service API. For each
piece of evidence (the primary TEE and any additional devices):

1. the TEE's verifier checks the evidence and its bindings at the request's instant;
2. its claims are arranged as the reference's annotated evidence (``report_data``,
   ``runtime_data_claims``, ``init_data``, ``init_data_claims`` lifted to the top, the
   rest under the TEE's name);
3. the appraisal policy ``<policy id>_<tee class>`` turns them into an AR4SI trust
   vector and extensions;

then one EAR token carries one appraisal per device (``cpu0``, ``gpu0``, ``gpu1`` ...).
A token is issued even when an appraisal is contraindicated: the resource policy decides.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from attestation.base import NotProvided
from attestation.registry import VerifierRegistry
from kbs.settings import TokenBrokerSettings
from kbs.stores import ATTESTATION_NAMESPACE, PolicyStore, ReferenceValueStore
from kbs.tokens import TokenSigner
from policy.base import Appraisal, PolicyEngine
from policy.errors import PolicyEvaluationError

_logger = logging.getLogger(__name__)

__all__ = ["AttestationService", "IssuedToken", "VerificationRequest"]


@dataclass(frozen=True, slots=True)
class VerificationRequest:
    """One piece of evidence and what it must be bound to.

    Attributes:
        tee: the TEE name (``tdx``, ``sample``...).
        evidence: the TEE-specific evidence JSON.
        report_data: expected runtime-data digest, or NOT_PROVIDED.
        runtime_data_claims: the structured runtime data that was hashed (becomes the
            ``runtime_data_claims`` claim), or ``None``.
        init_data_hash: expected init-data digest, or NOT_PROVIDED.
        init_data_claims: the parsed init-data ``data`` table, or ``None``.
    """

    tee: str
    evidence: Any
    report_data: bytes | Literal[NotProvided.MARKER]
    runtime_data_claims: Any
    init_data_hash: bytes | Literal[NotProvided.MARKER]
    init_data_claims: Any


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A signed EAR token and the claims inside it."""

    token: str
    claims: Mapping[str, Any]
    appraisals: Mapping[str, Appraisal] = field(default_factory=dict)


def annotate(
    tee: str,
    claims: Mapping[str, Any],
    *,
    runtime_data_claims: Any,
    init_data_claims: Any,
    verbose: bool,
) -> dict[str, Any]:
    """Arrange verifier claims as the reference's annotated evidence."""
    rest = dict(claims)
    out: dict[str, Any] = {}
    if "init_data" in rest:
        out["init_data"] = rest.pop("init_data")
        out["init_data_claims"] = init_data_claims
    if "report_data" in rest:
        out["report_data"] = rest.pop("report_data")
        runtime = runtime_data_claims
        if not verbose and isinstance(runtime, dict):
            runtime = {k: v for k, v in runtime.items() if k != "additional-evidence"}
        out["runtime_data_claims"] = runtime
    out[tee] = rest
    return out


class AttestationService:
    """Verifies evidence and issues EAR tokens."""

    def __init__(
        self,
        *,
        verifiers: VerifierRegistry,
        engine: PolicyEngine,
        policies: PolicyStore,
        reference_values: ReferenceValueStore,
        signer: TokenSigner,
        broker: TokenBrokerSettings,
    ) -> None:
        """Wire the service to its collaborators (all built by ``create_app``)."""
        self.verifiers = verifiers
        self._engine = engine
        self._policies = policies
        self._reference_values = reference_values
        self._signer = signer
        self._broker = broker

    async def evaluate(
        self,
        requests: Sequence[VerificationRequest],
        *,
        policy_ids: Sequence[str],
        at: dt.datetime,
    ) -> IssuedToken:
        """Verify and appraise every request and sign one EAR token.

        Raises:
            EvidenceInvalidError: a piece of evidence was rejected (guest's fault).
            UnsupportedTeeError: no verifier for a TEE.
            VerifierUnavailableError: a verifier could not decide (our fault).
            PolicyEvaluationError: the appraisal policy is missing or failed.
            DatabaseUnavailableError: policies or reference values could not be read.
        """
        if not requests:
            raise ValueError("no evidence to evaluate")
        if not policy_ids:
            raise ValueError("no policy id given")
        policy_id = policy_ids[0]
        # 1. Verify every piece of evidence before spending anything on policy.
        verified = []
        for req in requests:
            verifier = self.verifiers.get(req.tee)
            claims = await verifier.verify(
                req.evidence,
                report_data=req.report_data,
                init_data_hash=req.init_data_hash,
                at=at,
            )
            verified.append((req, claims))
        # 2. Appraise each device with the policy of its class.
        reference_values = await self._reference_values.snapshot(at=at)
        submods: dict[str, Any] = {}
        appraisals: dict[str, Appraisal] = {}
        class_counts: dict[str, int] = {}
        for req, claims in verified:
            annotated = annotate(
                req.tee,
                claims.claims,
                runtime_data_claims=req.runtime_data_claims,
                init_data_claims=req.init_data_claims,
                verbose=self._broker.verbose_token,
            )
            class_policy = f"{policy_id}_{claims.tee_class}"
            text = await self._policies.get(ATTESTATION_NAMESPACE, class_policy)
            if text is None:
                raise PolicyEvaluationError(f"attestation policy {class_policy!r} not found")
            appraisal = self._engine.appraise(
                text, input_=annotated, reference_values=reference_values
            )
            index = class_counts.get(claims.tee_class, 0)
            class_counts[claims.tee_class] = index + 1
            name = f"{claims.tee_class}{index}"
            submod: dict[str, Any] = {
                "ear.status": appraisal.status,
                "ear.trustworthiness-vector": dict(appraisal.trust_vector),
                "ear.appraisal-policy-id": policy_id,
                "ear.veraison.annotated-evidence": annotated,
            }
            for ext in appraisal.extensions:
                submod[ext.name] = ext.value
            submods[name] = submod
            appraisals[name] = appraisal
            _logger.info(
                "appraised %s evidence as %s (%s, policy %s)",
                req.tee,
                appraisal.status,
                name,
                class_policy,
            )
        # 3. One token for the whole guest.
        iat = int(at.timestamp())
        ear: dict[str, Any] = {
            "eat_profile": self._broker.profile_name,
            "iat": iat,
            "ear.verifier-id": {
                "developer": self._broker.developer_name,
                "build": self._broker.build_name,
            },
            "submods": submods,
            "exp": iat + self._broker.duration_min * 60,
            "iss": self._broker.issuer_name,
        }
        return IssuedToken(token=self._signer.sign(ear), claims=ear, appraisals=appraisals)
