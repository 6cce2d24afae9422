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
from policy.defaults import (
    DEFAULT_ATTESTATION_POLICIES,
    DEFAULT_RESOURCE_POLICY,
    DEFAULT_RESOURCE_POLICY_ID,
    SAMPLE_RESOURCE_POLICIES,
    policy_hash,
)
from policy.ear import status_of, tier, worst_status
from policy.engine import RegoEngine
from policy.errors import (
    PolicyError,
    PolicyEvaluationError,
    PolicyInvalidError,
    ReferenceValueError,
)
from policy.reference_values import parse_message

__all__ = [
    "DEFAULT_ATTESTATION_POLICIES",
    "DEFAULT_RESOURCE_POLICY",
    "DEFAULT_RESOURCE_POLICY_ID",
    "EAR_STATUSES",
    "SAMPLE_RESOURCE_POLICIES",
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
    "RegoEngine",
    "parse_message",
    "policy_hash",
    "status_of",
    "tier",
    "worst_status",
]
