# SPDX-License-Identifier: Apache-2.0
"""EAR trust-tier arithmetic (draft-ietf-rats-ear, AR4SI trustworthiness claims).

Every trustworthiness claim is a signed 8-bit integer. Its *tier* depends only on the
value's magnitude band, and an appraisal's ``ear.status`` is the worst tier over its
trust vector, in the order ``none < affirming < warning < contraindicated``. This is the
arithmetic of the EAR library Trustee uses (veraison rust-ear ``TrustClaim::tier`` and
``Appraisal::update_status_from_trust_vector``), re-derived here from the draft.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Final

from policy.base import EAR_STATUSES, TRUST_CLAIM_NAMES

_logger = logging.getLogger(__name__)

__all__ = [
    "CLAIM_MAX",
    "CLAIM_MIN",
    "status_of",
    "tier",
    "worst_status",
]

#: Smallest and largest value a trustworthiness claim can hold (a CBOR int8).
CLAIM_MIN: Final = -128
CLAIM_MAX: Final = 127

# Inclusive (low, high) bands, checked from the narrowest outwards: a value belongs to
# the first band that contains it.
_NONE_BAND: Final = (-1, 1)
_AFFIRMING_BAND: Final = (-32, 31)
_WARNING_BAND: Final = (-96, 95)

_RANK: Final = {name: rank for rank, name in enumerate(EAR_STATUSES)}


def tier(value: int) -> str:
    """Return the EAR tier of one trustworthiness claim value.

    ``-1..1`` is ``none`` (no claim, or verifier malfunction / unexpected evidence),
    ``-32..31`` is ``affirming``, ``-96..95`` is ``warning``, anything else is
    ``contraindicated``.

    Args:
        value: the claim value, an integer in -128..127 (``bool`` is not accepted).

    Returns:
        One of :data:`policy.base.EAR_STATUSES`.

    Raises:
        TypeError: ``value`` is not an ``int`` (or is a ``bool``).
        ValueError: ``value`` is outside -128..127.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("trust claim value must be an integer")
    if not CLAIM_MIN <= value <= CLAIM_MAX:
        raise ValueError("trust claim value must be in -128..127")
    if _NONE_BAND[0] <= value <= _NONE_BAND[1]:
        return "none"
    if _AFFIRMING_BAND[0] <= value <= _AFFIRMING_BAND[1]:
        return "affirming"
    if _WARNING_BAND[0] <= value <= _WARNING_BAND[1]:
        return "warning"
    return "contraindicated"


def worst_status(statuses: Iterable[str]) -> str:
    """Return the worst of several EAR statuses (``none`` for an empty collection).

    Args:
        statuses: status names.

    Returns:
        The most severe status in the order none < affirming < warning < contraindicated.

    Raises:
        ValueError: a name is not one of :data:`policy.base.EAR_STATUSES`.
    """
    worst = "none"
    for status in statuses:
        if status not in _RANK:
            raise ValueError("unknown ear status")
        if _RANK[status] > _RANK[worst]:
            worst = status
    return worst


def status_of(trust_vector: Mapping[str, int]) -> str:
    """Return ``ear.status`` for a trust vector: the worst tier over its claims.

    Claims missing from ``trust_vector`` count as 0 (tier ``none``), as an unset claim
    does in EAR.

    Args:
        trust_vector: claim name -> value; names from :data:`policy.base.TRUST_CLAIM_NAMES`.

    Returns:
        One of :data:`policy.base.EAR_STATUSES`.

    Raises:
        ValueError: an unknown claim name or an out-of-range value.
        TypeError: a value that is not an integer.
    """
    unknown = set(trust_vector) - set(TRUST_CLAIM_NAMES)
    if unknown:
        raise ValueError("unknown trust claim name")
    return worst_status([tier(value) for value in trust_vector.values()])
