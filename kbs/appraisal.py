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

The attestation-service API can ask for the legacy Simple profile instead
(:meth:`AttestationService.evaluate_simple`): the same verification and the same
appraisal policies, once per requested policy id, and an RS384 token that is issued only
when every device is ``affirming`` under every requested policy (the reference's Simple
broker refused to issue when a policy did not allow).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from attestation.base import NotProvided, VerifiedClaims
from attestation.registry import VerifierRegistry
from kbs.entropy import Entropy
from kbs.errors import AttestationRejectedError
from kbs.settings import TokenBrokerSettings
from kbs.stores import ATTESTATION_NAMESPACE, PolicyStore, ReferenceValueStore, policy_sha384
from kbs.tokens import SimpleTokenSigner, TokenSigner
from policy.base import Appraisal, PolicyEngine
from policy.errors import PolicyEvaluationError

_logger = logging.getLogger(__name__)

__all__ = ["AttestationService", "IssuedToken", "VerificationRequest", "flatten_claims"]


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


def flatten_claims(tee: str, claims: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten verifier claims the way the reference's Simple token writes ``tcb-status``.

    Nested objects become dotted keys under the TEE's name (``tdx.quote.body.mr_td``);
    arrays and scalars are kept as values; ``report_data`` and ``init_data`` stay at the
    top, without the prefix (empty strings when the verifier gave none).
    """
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, Mapping):
            for key, child in value.items():
                walk(child, f"{prefix}.{key}")
        else:
            flat[prefix] = value

    for key, value in claims.items():
        if key not in ("report_data", "init_data"):
            walk(value, f"{tee}.{key}")
    flat["report_data"] = claims.get("report_data", "")
    flat["init_data"] = claims.get("init_data", "")
    return flat


@dataclass(frozen=True, slots=True)
class _Device:
    """One verified piece of evidence, before appraisal."""

    request: VerificationRequest
    verified: VerifiedClaims
    annotated: dict[str, Any]


class AttestationService:
    """Verifies evidence and issues EAR (or, for the attestation-service API, Simple) tokens."""

    def __init__(
        self,
        *,
        verifiers: VerifierRegistry,
        engine: PolicyEngine,
        policies: PolicyStore,
        reference_values: ReferenceValueStore,
        signer: TokenSigner,
        broker: TokenBrokerSettings,
        simple_signer: SimpleTokenSigner | None = None,
    ) -> None:
        """Wire the service to its collaborators (all built by ``create_app``)."""
        self.verifiers = verifiers
        self._engine = engine
        self._policies = policies
        self._reference_values = reference_values
        self._signer = signer
        self._broker = broker
        self._simple_signer = simple_signer

    async def evaluate(
        self,
        requests: Sequence[VerificationRequest],
        *,
        policy_ids: Sequence[str],
        at: dt.datetime,
    ) -> IssuedToken:
        """Verify and appraise every request and sign one EAR token.

        Only the first policy id is applied (as in the reference's EAR broker).

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
        devices = await self._verify_all(requests, at=at)
        # 2. Appraise each device with the policy of its class.
        reference_values = await self._reference_values.snapshot(at=at)
        submods: dict[str, Any] = {}
        appraisals: dict[str, Appraisal] = {}
        for name, device, appraisal, _ in await self._appraise_all(
            devices, policy_id, reference_values
        ):
            submod: dict[str, Any] = {
                "ear.status": appraisal.status,
                "ear.trustworthiness-vector": dict(appraisal.trust_vector),
                "ear.appraisal-policy-id": policy_id,
                "ear.veraison.annotated-evidence": device.annotated,
            }
            for ext in appraisal.extensions:
                submod[ext.name] = ext.value
            submods[name] = submod
            appraisals[name] = appraisal
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

    async def evaluate_simple(
        self,
        requests: Sequence[VerificationRequest],
        *,
        policy_ids: Sequence[str],
        at: dt.datetime,
        entropy: Entropy,
    ) -> IssuedToken:
        """Verify, appraise under every policy id, and sign one Simple (RS384) token.

        The token is refused unless every device is ``affirming`` under every requested
        policy; its ``evaluation-reports`` list each policy id with the SHA-384 (hex) of
        the policy applied to the first device.

        Raises:
            AttestationRejectedError: a requested policy was not satisfied.
            EvidenceInvalidError: a piece of evidence was rejected (guest's fault).
            UnsupportedTeeError: no verifier for a TEE.
            VerifierUnavailableError: a verifier could not decide (our fault).
            PolicyEvaluationError: an appraisal policy is missing or failed.
            DatabaseUnavailableError: policies or reference values could not be read.
        """
        if self._simple_signer is None:
            raise ValueError("no Simple token signer configured")
        if not requests:
            raise ValueError("no evidence to evaluate")
        if not policy_ids:
            raise ValueError("no policy id given")
        # 1. Verify every piece of evidence once.
        devices = await self._verify_all(requests, at=at)
        # 2. Every requested policy must find every device affirming.
        reference_values = await self._reference_values.snapshot(at=at)
        reports: list[dict[str, str]] = []
        for policy_id in dict.fromkeys(policy_ids):
            appraised = await self._appraise_all(devices, policy_id, reference_values)
            for name, _, appraisal, _ in appraised:
                if appraisal.status != "affirming":
                    _logger.info(
                        "simple token refused: %s is %s under policy %s",
                        name,
                        appraisal.status,
                        policy_id,
                    )
                    raise AttestationRejectedError(f"Reject by policy {policy_id}")
            reports.append({"policy-id": policy_id, "policy-hash": appraised[0][3]})
        # 3. The reference's Simple claims, then the signature.
        flat: dict[str, Any] = {}
        for device in devices:
            flat.update(flatten_claims(device.request.tee, device.verified.claims))
        first = devices[0].request
        claims = {
            "tee": first.tee,
            "evaluation-reports": reports,
            "tcb-status": json.dumps(flat, separators=(",", ":"), sort_keys=True),
            "customized_claims": {
                "init_data": first.init_data_claims,
                "runtime_data": first.runtime_data_claims,
            },
        }
        token, full = self._simple_signer.sign_simple(
            claims,
            at=at,
            duration=dt.timedelta(minutes=self._broker.duration_min),
            issuer=self._broker.issuer_name,
            entropy=entropy,
        )
        return IssuedToken(token=token, claims=full)

    async def _verify_all(
        self, requests: Sequence[VerificationRequest], *, at: dt.datetime
    ) -> list[_Device]:
        devices = []
        for req in requests:
            verifier = self.verifiers.get(req.tee)
            verified = await verifier.verify(
                req.evidence,
                report_data=req.report_data,
                init_data_hash=req.init_data_hash,
                at=at,
            )
            annotated = annotate(
                req.tee,
                verified.claims,
                runtime_data_claims=req.runtime_data_claims,
                init_data_claims=req.init_data_claims,
                verbose=self._broker.verbose_token,
            )
            devices.append(_Device(request=req, verified=verified, annotated=annotated))
        return devices

    async def _appraise_all(
        self, devices: Sequence[_Device], policy_id: str, reference_values: Mapping[str, Any]
    ) -> list[tuple[str, _Device, Appraisal, str]]:
        """(submodule name, device, appraisal, policy hash) per device, in order."""
        out = []
        class_counts: dict[str, int] = {}
        for device in devices:
            tee_class = device.verified.tee_class
            class_policy = f"{policy_id}_{tee_class}"
            text = await self._policies.get(ATTESTATION_NAMESPACE, class_policy)
            if text is None:
                raise PolicyEvaluationError(f"attestation policy {class_policy!r} not found")
            appraisal = self._engine.appraise(
                text, input_=device.annotated, reference_values=reference_values
            )
            index = class_counts.get(tee_class, 0)
            class_counts[tee_class] = index + 1
            name = f"{tee_class}{index}"
            _logger.info(
                "appraised %s evidence as %s (%s, policy %s)",
                device.request.tee,
                appraisal.status,
                name,
                class_policy,
            )
            out.append((name, device, appraisal, policy_sha384(text)))
        return out
