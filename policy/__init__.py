# SPDX-License-Identifier: Apache-2.0
"""Appraisal and release policies in Rego, default policies, and reference values."""

from policy.base import (
    EAR_STATUSES,
    TRUST_CLAIM_NAMES,
    Appraisal,
    Decision,
    Extension,
    PolicyEngine,
    ReferenceValue,
)
from policy.errors import (
    PolicyError,
    PolicyEvaluationError,
    PolicyInvalidError,
    ReferenceValueError,
)

__all__ = [
    "EAR_STATUSES",
    "TRUST_CLAIM_NAMES",
    "Appraisal",
    "Decision",
    "Extension",
    "PolicyEngine",
    "PolicyError",
    "PolicyEvaluationError",
    "PolicyInvalidError",
    "ReferenceValue",
    "ReferenceValueError",
]
