# SPDX-License-Identifier: Apache-2.0
"""The TDX verifier as the application runs it: PCCS client, shared cache, refresh, status.

Built once by ``create_app`` from ``[attestation_service.verifier_config.dcap_verifier]``::

    httpx.AsyncClient -> PccsFetcher(ordered urls) -> CachingCollateralSource(
        store=SqlCollateralStore) -> TdxVerifier

* The HTTP client belongs to the application: closed on shutdown.
* Collateral lives in memory and in ``kbs_collateral`` (shared by replicas, kept across
  restarts). At start-up every stored entry is loaded (no PCCS request), so the
  background refresh keeps known platforms fresh before their first quote.
* :meth:`TdxService.refresh_forever` runs as a lifespan task: every
  ``refresh_interval_s`` it refreshes what is due; failures are logged, never raised.
* DCAP verification (steps 4-7: dcap-qvl, bindings, event log replay) runs in a
  :class:`~attestation.tdx.pool.VerificationPool` of ``verify_processes`` worker
  processes (default 1 per server process), not on the event loop: dcap-qvl holds the GIL
  for the whole call (about 1 ms, plus about 1 ms for a large event log), so inline it
  stalls every other request of the process and a thread pool would not help. Only the
  quote bytes, a collateral digest, the root DER and the time cross to the worker. The
  pool starts with the application (forkserver, warmed up before the first request), is
  replaced when a worker dies (that attestation fails 503 ``VerifierUnavailable``), and
  is shut down with the application. ``verify_processes = 0`` runs verification inline.
  Measurements: docs/tdx.md and bench/verify_offload.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Final

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.ext.asyncio import AsyncEngine

from attestation.tdx.collateral import CachingCollateralSource, CollateralObserver, PccsFetcher
from attestation.tdx.dcap import PlatformPolicy, intel_root_ca_der
from attestation.tdx.pool import VerificationPool
from attestation.tdx.verifier import TdxVerifier
from kbs.clock import Clock
from kbs.collateral_store import SqlCollateralStore
from kbs.errors import DatabaseUnavailableError
from kbs.settings import DcapVerifierSettings

_logger = logging.getLogger(__name__)

__all__ = ["CollateralReadiness", "TdxService", "build_tdx_service", "load_root_ca_der"]

#: A trust anchor file larger than this is not a certificate.
MAX_ROOT_CA_BYTES: Final = 64 * 1024


def load_root_ca_der(data: bytes) -> bytes:
    """Return the DER of a self-signed CA certificate given as DER or PEM.

    Raises:
        ValueError: not exactly one certificate, or not a self-signed CA.
    """
    if len(data) > MAX_ROOT_CA_BYTES:
        raise ValueError("root ca file is too large")
    if data.lstrip().startswith(b"-----BEGIN"):
        certs = x509.load_pem_x509_certificates(data)
        if len(certs) != 1:
            raise ValueError("root ca file must hold exactly one certificate")
        cert = certs[0]
    else:
        cert = x509.load_der_x509_certificate(data)
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ValueError("root ca certificate has no basic constraints") from None
    if not constraints.ca or cert.issuer != cert.subject:
        raise ValueError("root ca certificate is not a self-signed ca")
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True, slots=True)
class CollateralReadiness:
    """What ``/readyz`` says about DCAP collateral.

    Attributes:
        ready: no known platform is left without valid collateral.
        summary: one line for ``checks.collateral``.
        entries: per (FMSPC, CA, update type) freshness, JSON-ready.
    """

    ready: bool
    summary: str
    entries: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class TdxService:
    """The parts of the TDX verifier the application owns."""

    verifier: TdxVerifier
    source: CachingCollateralSource
    store: SqlCollateralStore
    fetcher: PccsFetcher
    http: httpx.AsyncClient
    refresh_interval_s: float
    pool: VerificationPool | None = None

    async def aclose(self) -> None:
        """Cancel PCCS fetches still under way, close the HTTP client, stop the pool."""
        await self.source.aclose()
        await self.http.aclose()
        if self.pool is not None:
            # Joining the workers blocks: not on the event loop.
            await asyncio.to_thread(self.pool.shutdown, wait=True, cancel_futures=True)

    async def refresh_forever(self, clock: Clock) -> None:
        """Refresh due collateral now and then every ``refresh_interval_s``, until cancelled.

        Never raises (except ``CancelledError``): a failing pass is logged and retried at
        the next interval; the cache keeps serving what is still valid.
        """
        while True:
            try:
                report = await self.source.refresh_due(clock.now())
            except Exception:
                _logger.exception("collateral refresh pass failed")
            else:
                if report.refreshed:
                    _logger.info(
                        "collateral refreshed for %s", ", ".join(map(str, report.refreshed))
                    )
                if report.failed:
                    _logger.warning(
                        "collateral refresh failed for %s (still serving what is valid)",
                        ", ".join(map(str, report.failed)),
                    )
            await asyncio.sleep(self.refresh_interval_s)

    def readiness(self, at: dt.datetime) -> CollateralReadiness:
        """Collateral freshness at ``at`` for the readiness endpoint.

        No cached platform yet is ready ("nothing to refresh"); a platform whose cached
        collateral is no longer valid (expired and not refreshed) is not: its quotes
        would be answered 503 ``CollateralUnavailable``.
        """
        statuses = self.source.status(at)
        entries = [status.as_dict() for status in statuses]
        if not statuses:
            summary = "ok: no platform seen yet, nothing cached"
            return CollateralReadiness(ready=True, summary=summary, entries=[])
        invalid = [str(s.key) for s in statuses if not s.valid]
        if invalid:
            summary = "no valid collateral for " + ", ".join(invalid)
            return CollateralReadiness(ready=False, summary=summary, entries=entries)
        stale = [str(s.key) for s in statuses if not s.fresh]
        summary = "ok: valid, refresh overdue for " + ", ".join(stale) if stale else "ok"
        return CollateralReadiness(ready=True, summary=summary, entries=entries)


async def build_tdx_service(
    settings: DcapVerifierSettings,
    *,
    engine: AsyncEngine,
    observer: CollateralObserver | None = None,
) -> TdxService | None:
    """Build the TDX verifier and its collateral cache, or ``None`` if disabled.

    ``observer`` is told about PCCS requests and cache lookups (the app's metrics).

    Raises:
        OSError: ``insecure_root_ca_path`` cannot be read.
        ValueError: ``insecure_root_ca_path`` is not a self-signed CA certificate.
    """
    if not settings.enabled:
        _logger.info("tdx verifier disabled by configuration")
        return None
    if settings.insecure_root_ca_path is not None:
        root_ca_der = load_root_ca_der(settings.insecure_root_ca_path.read_bytes())
        _logger.warning(
            "tdx quotes are checked against the PRIVATE root ca %s, not Intel's (insecure)",
            settings.insecure_root_ca_path,
        )
    else:
        root_ca_der = intel_root_ca_der()
    timeout = httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s)
    http = httpx.AsyncClient(
        timeout=timeout,
        verify=True,  # PCCS over TLS is verified (collateral is signature-checked too)
        follow_redirects=False,
    )
    fetcher = PccsFetcher(
        http,
        base_urls=settings.pccs_urls,
        root_ca_der=root_ca_der,
        tcb_update_type=settings.tcb_update_type,
        timeout=timeout,
        observer=observer,
    )
    pool = await _start_pool(settings.verify_processes)
    store = SqlCollateralStore(engine)
    source = CachingCollateralSource(
        fetcher,
        store=store,
        root_ca_der=root_ca_der,
        tcb_update_type=settings.tcb_update_type,
        max_age=dt.timedelta(hours=settings.max_collateral_age_h),
        retry_interval=dt.timedelta(seconds=settings.retry_interval_s),
        observer=observer,
    )
    verifier = TdxVerifier(
        collateral=source,
        root_ca_der=root_ca_der,
        platform_policy=PlatformPolicy(
            allow_dynamic_platform=settings.allow_dynamic_platform,
            allow_cached_keys=settings.allow_cached_keys,
            allow_smt=settings.allow_smt,
        ),
        executor=pool,  # None: inline (verify_processes = 0)
    )
    try:
        loaded = await source.preload(await store.keys())
    except DatabaseUnavailableError:
        _logger.warning("stored collateral could not be listed; starting cold", exc_info=True)
    else:
        if loaded:
            _logger.info("loaded stored collateral for %d platform(s)", loaded)
    _logger.info(
        "tdx verifier: pccs %s, tcb update type %s",
        " -> ".join(settings.pccs_urls),
        settings.tcb_update_type,
    )
    return TdxService(
        verifier=verifier,
        source=source,
        store=store,
        fetcher=fetcher,
        http=http,
        refresh_interval_s=settings.refresh_interval_s,
        pool=pool,
    )


async def _start_pool(processes: int) -> VerificationPool | None:
    """Start ``processes`` verification workers and wait until they answer (0: none)."""
    if processes == 0:
        _logger.info(
            "tdx verification runs inline (verify_processes = 0): each quote holds the "
            "event loop for about its CPU time"
        )
        return None
    pool = VerificationPool(processes)
    try:
        # The first start waits for the forkserver to import the verifier: off the loop.
        pids = await asyncio.to_thread(pool.warm)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    _logger.info("tdx verification worker processes: %s", ", ".join(map(str, pids)))
    return pool
