# SPDX-License-Identifier: Apache-2.0
"""Errors raised by the policy engine and the reference-value parser."""

from __future__ import annotations

__all__ = [
    "PolicyError",
    "PolicyEvaluationError",
    "PolicyInvalidError",
    "ReferenceValueError",
]


class PolicyError(Exception):
    """Root of every error this package raises."""


class PolicyInvalidError(PolicyError):
    """A policy text does not parse or compile, or lacks the rules its role needs."""


class PolicyEvaluationError(PolicyError):
    """Evaluating a policy failed, or it produced a value of the wrong type.

    Callers fail closed on this error: a resource request is denied and an appraisal
    fails.
    """


class ReferenceValueError(PolicyError):
    """A reference-value message is malformed or uses an unsupported format."""
