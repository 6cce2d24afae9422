# SPDX-License-Identifier: Apache-2.0
"""Suite-wide fixtures: where the shared test data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Project root (the checkout).
ROOT = Path(__file__).resolve().parents[1]
#: ``../shared`` beside the checkout: real quotes, reference vectors, research notes.
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared test data not found at {SHARED}")
    return SHARED
