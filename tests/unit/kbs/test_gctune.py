# SPDX-License-Identifier: Apache-2.0
"""kbs.gctune: serving workers freeze their start-up heap; everything else keeps the defaults."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

from kbs import gctune
from support.kbs_app import running_kbs, settings_for

_TUNED = f"""
import gc
from kbs.gctune import tune_for_serving

class Cycle:
    def __init__(self):
        self.me = self

before = gc.get_freeze_count()
frozen = tune_for_serving()
assert before == 0 and frozen == gc.get_freeze_count() > 1000, (before, frozen)
assert gc.get_threshold() == ({gctune.GEN0_THRESHOLD}, {gctune.GEN1_THRESHOLD}, \
{gctune.GEN2_THRESHOLD}), gc.get_threshold()
# Cyclic garbage made after start-up is still collected.
Cycle()
assert gc.collect() >= 1
print("ok")
"""


def test_tune_for_serving_freezes_and_raises_thresholds() -> None:
    # In a child: freezing this test process would change how every later test runs.
    result = subprocess.run(
        [sys.executable, "-c", _TUNED], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


async def test_create_app_leaves_the_collector_alone_by_default(tmp_path: Path) -> None:
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    async with running_kbs(settings_for(tmp_path, None)) as kbs:
        assert (await kbs.http.get("/healthz")).status_code == 200
    assert (gc.get_threshold(), gc.get_freeze_count()) == (thresholds, frozen)
