# SPDX-License-Identifier: Apache-2.0
"""EAR tier arithmetic: band edges, status as the worst tier, bad values."""

from __future__ import annotations

import pytest

from policy import EAR_STATUSES, TRUST_CLAIM_NAMES
from policy.ear import status_of, tier, worst_status


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-128, "contraindicated"),
        (-97, "contraindicated"),
        (-96, "warning"),
        (-33, "warning"),
        (-32, "affirming"),
        (-2, "affirming"),
        (-1, "none"),
        (0, "none"),
        (1, "none"),
        (2, "affirming"),
        (31, "affirming"),
        (32, "warning"),
        (33, "warning"),
        (36, "warning"),
        (95, "warning"),
        (96, "contraindicated"),
        (97, "contraindicated"),
        (99, "contraindicated"),
        (127, "contraindicated"),
    ],
)
def test_tier_band_edges(value, expected):
    assert tier(value) == expected


@pytest.mark.parametrize("value", [-129, 128, 1000])
def test_tier_rejects_out_of_range(value):
    with pytest.raises(ValueError, match=r"-128\.\.127"):
        tier(value)


@pytest.mark.parametrize("value", [True, False, 2.0, "2", None])
def test_tier_rejects_non_integers(value):
    with pytest.raises(TypeError, match="integer"):
        tier(value)


def test_status_is_worst_tier():
    vector = dict.fromkeys(TRUST_CLAIM_NAMES, 0)
    assert status_of(vector) == "none"
    vector["hardware"] = 2
    assert status_of(vector) == "affirming"
    vector["configuration"] = 36
    assert status_of(vector) == "warning"
    vector["executables"] = 96
    assert status_of(vector) == "contraindicated"
    vector["configuration"] = 3
    assert status_of(vector) == "contraindicated"


def test_status_of_negative_values_uses_bands_not_sign():
    assert status_of({"hardware": -2, "executables": 1}) == "affirming"
    assert status_of({"hardware": -40}) == "warning"


def test_status_of_empty_vector_is_none():
    assert status_of({}) == "none"


def test_status_of_rejects_unknown_claim():
    with pytest.raises(ValueError, match="unknown trust claim"):
        status_of({"firmware": 2})


def test_worst_status_order():
    assert worst_status([]) == "none"
    assert worst_status(["affirming", "none"]) == "affirming"
    assert worst_status(list(EAR_STATUSES)) == "contraindicated"
    assert worst_status(["warning", "affirming"]) == "warning"


def test_worst_status_rejects_unknown():
    with pytest.raises(ValueError, match="unknown ear status"):
        worst_status(["affirming", "great"])
