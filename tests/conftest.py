# SPDX-License-Identifier: Apache-2.0
"""Suite-wide fixtures: where the shared test data lives; TDX verification inline or pooled."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path

import pytest

from attestation.tdx.pool import VerificationPool
from support.verify_hooks import VERIFY_PROCESSES_ENV

#: Project root (the checkout).
ROOT = Path(__file__).resolve().parents[1]
#: ``../shared`` beside the checkout: real quotes, reference vectors, research notes.
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared test data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session", autouse=True)
def _inline_verification_by_default() -> Iterator[None]:
    """Apps verify TDX quotes inline unless a test asks for the pool.

    Starting and stopping a pool costs every app about half a second of wall time here
    (most apps never see a quote); the TDX modules run both ways (``verify_processes``),
    and tests/integration/test_tdx_offload.py sets ``verify_processes`` explicitly.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(VERIFY_PROCESSES_ENV, "0")
        yield


@pytest.fixture(scope="module", params=[0, 1], ids=["inline", "pool"])
def verify_processes(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run a module's apps with TDX verification inline (0) and in a process pool (1)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(VERIFY_PROCESSES_ENV, str(request.param))
        yield request.param


@pytest.fixture(scope="session")
def verification_pool() -> Iterator[VerificationPool]:
    """One warm verification worker process for the whole session."""
    pool = VerificationPool(1)
    pool.warm()
    yield pool
    pool.shutdown()


@pytest.fixture(params=["inline", "pool"])
def tdx_executor(request: pytest.FixtureRequest) -> Executor | None:
    """``TdxVerifier(executor=...)``: inline (``None``) and the process pool."""
    if request.param == "inline":
        return None
    pool: VerificationPool = request.getfixturevalue("verification_pool")
    return pool
