# SPDX-License-Identifier: Apache-2.0
"""The verification pool and what crosses to its workers (collateral by digest)."""

from __future__ import annotations

import base64
import pickle
from concurrent.futures import ThreadPoolExecutor

import pytest

from attestation.base import NOT_PROVIDED
from attestation.errors import VerifierUnavailableError
from attestation.tdx import verifier as verifier_module
from attestation.tdx.dcap import PlatformPolicy
from attestation.tdx.pool import MAX_VERIFY_PROCESSES, VerificationPool
from attestation.tdx.verifier import TdxVerifier, _check_in_worker, _CollateralMissingError
from support.tdx_pki import AT, StaticCollateralSource, TestPki


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return TestPki.create()


def _check(pki: TestPki, digest: bytes, qvl_json: str | None):
    return _check_in_worker(
        pki.quote(),
        digest,
        qvl_json,
        root_ca_der=pki.root_der,
        at=AT,
        platform_policy=PlatformPolicy(),
        report_data=NOT_PROVIDED,
        init_data_hash=NOT_PROVIDED,
        cc_eventlog=None,
    )


def test_a_worker_asks_for_collateral_once_then_keeps_it(pki, monkeypatch) -> None:
    monkeypatch.setattr(verifier_module, "_WORKER_COLLATERAL", verifier_module.Lru(4))
    collateral = pki.collateral()
    with pytest.raises(_CollateralMissingError):
        _check(pki, collateral.digest, None)
    dcap, log_claims = _check(pki, collateral.digest, collateral.qvl_json)
    assert dcap.tcb_status == "UpToDate"
    assert log_claims is None
    # From now on the digest alone is enough.
    assert _check(pki, collateral.digest, None)[0] == dcap
    # What comes back pickles (it crosses the process boundary).
    assert pickle.loads(pickle.dumps(dcap)) == dcap


def test_collateral_that_does_not_match_its_digest_is_refused(pki, monkeypatch) -> None:
    monkeypatch.setattr(verifier_module, "_WORKER_COLLATERAL", verifier_module.Lru(4))
    collateral = pki.collateral()
    with pytest.raises(VerifierUnavailableError, match="corrupt"):
        _check(pki, bytes(32), collateral.qvl_json)


async def test_thread_pool_gives_the_same_claims_as_inline(pki) -> None:
    evidence = {"quote": base64.b64encode(pki.quote()).decode()}
    source = StaticCollateralSource(pki.collateral())
    inline = TdxVerifier(collateral=source, root_ca_der=pki.root_der)
    kwargs = {"report_data": NOT_PROVIDED, "init_data_hash": NOT_PROVIDED, "at": AT}
    with ThreadPoolExecutor(1) as executor:
        pooled = TdxVerifier(collateral=source, root_ca_der=pki.root_der, executor=executor)
        assert (await pooled.verify(evidence, **kwargs)) == (
            await inline.verify(evidence, **kwargs)
        )


@pytest.mark.parametrize("processes", [0, MAX_VERIFY_PROCESSES + 1])
def test_pool_size_is_bounded(processes: int) -> None:
    with pytest.raises(ValueError, match="processes"):
        VerificationPool(processes)


def test_a_shut_down_pool_takes_no_jobs() -> None:
    pool = VerificationPool(1)
    pool.shutdown()
    pool.shutdown()  # idempotent
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(int)
