# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the policy tests."""

from __future__ import annotations

import pytest

from policy import RegoEngine


@pytest.fixture
def engine() -> RegoEngine:
    return RegoEngine()
