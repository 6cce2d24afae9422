# SPDX-License-Identifier: Apache-2.0
"""Errors raised by evidence verifiers.

Two trees, kept apart on purpose: "the evidence is bad" (:class:`EvidenceInvalidError`,
the guest's fault, a 401) and "we could not check it" (:class:`VerifierUnavailableError`,
our fault or a dependency's, a 503).
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "BindingMismatchError",
    "CollateralUnavailableError",
    "EvidenceInvalidError",
    "UnsupportedTeeError",
    "VerifierUnavailableError",
]


class AttestationError(Exception):
    """Root of every error this package raises."""


class EvidenceInvalidError(AttestationError):
    """The evidence is malformed, forged, stale or otherwise unacceptable."""


class BindingMismatchError(EvidenceInvalidError):
    """The evidence is genuine but not bound to this session (report_data, init_data)."""


class UnsupportedTeeError(AttestationError):
    """No verifier is enabled for the TEE the client named."""


class VerifierUnavailableError(AttestationError):
    """The verifier could not reach a decision because a dependency is unavailable."""


class CollateralUnavailableError(VerifierUnavailableError):
    """No valid DCAP collateral could be obtained (PCCS down and cache empty or expired)."""
