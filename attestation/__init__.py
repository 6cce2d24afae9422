# SPDX-License-Identifier: Apache-2.0
"""Evidence verifiers: one per TEE, behind the :class:`~attestation.base.Verifier` interface."""

from attestation.base import (
    MAX_EVIDENCE_BYTES,
    NOT_PROVIDED,
    NotProvided,
    VerifiedClaims,
    Verifier,
    tee_class,
)
from attestation.errors import (
    AttestationError,
    BindingMismatchError,
    CollateralUnavailableError,
    EvidenceInvalidError,
    UnsupportedTeeError,
    VerifierUnavailableError,
)
from attestation.registry import VerifierRegistry

__all__ = [
    "MAX_EVIDENCE_BYTES",
    "NOT_PROVIDED",
    "AttestationError",
    "BindingMismatchError",
    "CollateralUnavailableError",
    "EvidenceInvalidError",
    "NotProvided",
    "UnsupportedTeeError",
    "VerifiedClaims",
    "Verifier",
    "VerifierRegistry",
    "VerifierUnavailableError",
    "tee_class",
]
