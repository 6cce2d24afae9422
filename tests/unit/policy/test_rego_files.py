# SPDX-License-Identifier: Apache-2.0
"""Every .rego file we ship or test with parses with regorus (no `opa` binary here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_testdata import ASSETS, ROOT

from policy import RegoEngine

SHIPPED = ROOT / "policy" / "policies"
REGO_FILES = sorted([*SHIPPED.glob("*.rego"), *ASSETS.rglob("*.rego")])


def test_the_file_lists_are_not_empty():
    assert len(list(SHIPPED.glob("*.rego"))) >= 5
    assert list(ASSETS.glob("*.rego"))


@pytest.mark.parametrize("path", REGO_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_rego_file_parses(path: Path):
    RegoEngine().validate(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", sorted(SHIPPED.glob("*.rego")), ids=lambda path: path.name)
def test_shipped_policy_has_a_license_header(path: Path):
    assert path.read_text(encoding="utf-8").startswith("# SPDX-License-Identifier: Apache-2.0\n")
