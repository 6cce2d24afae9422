# SPDX-License-Identifier: Apache-2.0
"""Result types shared by the policy engine and its callers."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

_logger = logging.getLogger(__name__)

__all__ = [
    "EAR_STATUSES",
    "TRUST_CLAIM_NAMES",
    "Appraisal",
    "Decision",
    "Extension",
    "PolicyEngine",
    "ReferenceValue",
]

#: The eight AR4SI trustworthiness claims, in the order EAR lists them.
TRUST_CLAIM_NAMES: Final = (
    "instance-identity",
    "configuration",
    "executables",
    "file-system",
    "hardware",
    "runtime-opaque",
    "storage-opaque",
    "sourced-data",
)

#: EAR status tiers from best to worst ("none" means no claim was made).
EAR_STATUSES: Final = ("none", "affirming", "warning", "contraindicated")


@dataclass(frozen=True, slots=True)
class Extension:
    """One ``data.policy.extensions`` entry: a member added to the EAR appraisal."""

    name: str
    key: int
    value: Any


@dataclass(frozen=True, slots=True)
class Appraisal:
    """The outcome of an attestation (EAR appraisal) policy for one device.

    Attributes:
        trust_vector: all eight AR4SI claims (missing ones are 0), integers in -128..127.
        status: the worst tier over the vector (``none``, ``affirming``, ``warning`` or
            ``contraindicated``).
        extensions: extra appraisal members from ``data.policy.extensions``.
        policy_hash: SHA-384 hex digest of the policy text that was evaluated.
    """

    trust_vector: Mapping[str, int]
    status: str
    extensions: tuple[Extension, ...] = ()
    policy_hash: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a resource (release) policy.

    ``allowed`` is true only when the policy's ``allow`` rule evaluated to literally
    ``true``; ``reason`` says why not otherwise (for logs and explain output).
    ``remembered`` says the engine answered from its memo of earlier decisions.
    """

    allowed: bool
    reason: str = ""
    policy_hash: str = ""
    remembered: bool = False


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    """One reference value, as registered through an RVPS message.

    Attributes:
        name: the id policies query with ``query_reference_value(name)``.
        value: any JSON value (usually a list of accepted hex strings).
        expiration: when the value stops being returned, or ``None`` for never.
        version: the RVPS record version (``"0.1.0"``).
    """

    name: str
    value: Any
    expiration: dt.datetime | None = None
    version: str = "0.1.0"
    extra: Mapping[str, Any] = field(default_factory=dict)


class PolicyEngine(Protocol):
    """What the KBS needs from a policy engine."""

    def validate(self, text: str) -> None:
        """Check that ``text`` compiles.

        Raises:
            PolicyInvalidError: it does not.
        """
        ...

    def appraise(
        self, text: str, *, input_: Mapping[str, Any], reference_values: Mapping[str, Any]
    ) -> Appraisal:
        """Evaluate an attestation policy (``data.policy.trust_claims``/``extensions``).

        ``query_reference_value(id)`` inside the policy returns ``reference_values[id]``
        or ``null``.

        Raises:
            PolicyInvalidError: the text does not compile.
            PolicyEvaluationError: evaluation failed or produced ill-typed claims.
        """
        ...

    def allow(
        self,
        text: str,
        *,
        input_: Mapping[str, Any],
        data: Mapping[str, Any],
        input_key: str | None = None,
    ) -> Decision:
        """Evaluate a resource policy (``data.policy.allow``); never raises for a deny.

        ``input_key``, when given, is equal only for equal inputs; an engine may answer
        a repeated (policy, input_key, data) question from memory when the policy's
        answer cannot change.

        Raises:
            PolicyInvalidError: the text does not compile.
        """
        ...
