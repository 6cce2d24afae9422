# SPDX-License-Identifier: Apache-2.0
"""The policies we ship, and the policy hash.

The Rego texts live in ``policy/policies/`` and travel inside the wheel as package
data. Attestation policies are keyed by the id the attestation service looks up
(``default_<tee class>``); the resource policy by the id Trustee's admin API uses.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType
from typing import Final

_logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ATTESTATION_POLICIES",
    "DEFAULT_RESOURCE_POLICY",
    "DEFAULT_RESOURCE_POLICY_ID",
    "SAMPLE_RESOURCE_POLICIES",
    "policy_hash",
    "shipped_policy",
]

_POLICY_DIR: Final = "policies"


def shipped_policy(name: str) -> str:
    """Return the text of a policy shipped in ``policy/policies/<name>.rego``.

    Args:
        name: the file name without ``.rego`` (e.g. ``"default_cpu"``).

    Returns:
        The policy text (UTF-8).

    Raises:
        FileNotFoundError: no such shipped policy.
        ValueError: ``name`` is not a plain file stem.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError("policy name must be a plain file stem")
    resource = resources.files("policy").joinpath(_POLICY_DIR, f"{name}.rego")
    return resource.read_text(encoding="utf-8")


def policy_hash(text: str) -> str:
    """Return the policy hash: the SHA-384 hex digest of the UTF-8 policy text.

    Trustee computes the same digest (and logs it); EAR appraisals carry it.

    Args:
        text: the policy text.

    Returns:
        96 lowercase hex characters.
    """
    return hashlib.sha384(text.encode("utf-8")).hexdigest()


#: Attestation (EAR appraisal) policies installed at start-up, by policy id.
DEFAULT_ATTESTATION_POLICIES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "default_cpu": shipped_policy("default_cpu"),
        "default_gpu": shipped_policy("default_gpu"),
    }
)

#: The id under which the resource policy is stored and served by the admin API.
DEFAULT_RESOURCE_POLICY_ID: Final = "resource-policy"

#: Our default resource policy: release only when every appraisal is ``affirming``.
DEFAULT_RESOURCE_POLICY: Final = shipped_policy("resource_policy")

#: Sample resource policies for operators and tests, by name.
SAMPLE_RESOURCE_POLICIES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "allow_all": shipped_policy("allow_all"),
        "deny_all": shipped_policy("deny_all"),
        "affirming": DEFAULT_RESOURCE_POLICY,
    }
)
