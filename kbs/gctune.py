# SPDX-License-Identifier: Apache-2.0
"""Garbage-collector settings for a serving process (``kbs serve`` workers).

CPython's cyclic collector runs a generation-0 pass after every 700 net container
allocations, and every so often a full pass over every tracked object. A serving worker
holds ~145,000 objects from its imports and start-up (FastAPI, pydantic, SQLAlchemy,
the policies), none of which ever becomes garbage, and a TDX request allocates
thousands: decoding a TDX token's ~40 KB of claims alone makes ~2,000 dicts and lists.
With the defaults those request objects are still alive when the passes run, so they
are promoted and soon trigger full passes, each of which walks the whole heap: 90 ms
on the 2-core machine, 15 times in 8 s of Bearer fetches with a TDX token, a fifth of
the server's CPU and the whole of its p99 latency (``bench/README.md``, sixth round).

:func:`tune_for_serving`, once start-up is done:

1. collects once, so start-up garbage does not outlive it;
2. moves every object left to the permanent generation (:func:`gc.freeze`), which no
   later pass walks: a full pass then costs what the requests in flight hold;
3. raises the generation-0 threshold to :data:`GEN0_THRESHOLD`, so a pass finds most
   request objects already freed by reference counting instead of promoting them.

Only cyclic garbage waits longer for its pass; everything else is still freed the
moment its last reference goes. Tests and embedders that call ``create_app`` keep the
interpreter's defaults: only the ``kbs serve`` entry point (``kbs.asgi``) asks for this.
"""

from __future__ import annotations

import gc
import logging
from typing import Final

__all__ = ["GEN0_THRESHOLD", "GEN1_THRESHOLD", "GEN2_THRESHOLD", "tune_for_serving"]

_logger = logging.getLogger(__name__)

#: Net container allocations between generation-0 passes (CPython's default: 700).
GEN0_THRESHOLD: Final = 10_000
#: Generation-0 passes per generation-1 pass (default 10).
GEN1_THRESHOLD: Final = 20
#: Generation-1 passes per full pass (default 10; CPython also waits until the objects
#: awaiting a full pass are a quarter of those that survived the last one).
GEN2_THRESHOLD: Final = 20


def tune_for_serving() -> int:
    """Collect, freeze what start-up left and raise the thresholds; returns the frozen count."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
    frozen = gc.get_freeze_count()
    _logger.info(
        "gc tuned for serving: %d start-up objects frozen, thresholds %s",
        frozen,
        gc.get_threshold(),
    )
    return frozen
