# SPDX-License-Identifier: Apache-2.0
"""DCAP collateral sources: a PCCS client with failover, and a cache that rides out outages.

* :class:`PccsFetcher` fetches the four pieces (PCK CRL, TDX TCB Info, TD QE Identity,
  root CA CRL) for one (FMSPC, PCK CA) from an ordered list of PCCS/PCS base URLs, over
  an injected ``httpx.AsyncClient``, with per-request timeouts and response size caps.
  What it returns is parsed and signature-checked up to the trust anchor, so a broken
  PCCS can never make genuine quotes look forged; "could not fetch" is
  :class:`~attestation.errors.CollateralUnavailableError`, never the guest's fault.
* :class:`CachingCollateralSource` keeps parsed collateral in memory and in a
  :class:`~attestation.tdx.base.CollateralStore` (shared by replicas, survives restarts).
  A fresh entry costs no I/O at all. A stale entry that is still valid is served at once
  while a refresh runs in the background (at most one attempt per ``retry_interval``);
  the application also calls :meth:`CachingCollateralSource.refresh_due` periodically.
  Concurrent cold requests for one key share one fetch.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import string
from collections import OrderedDict
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation.errors import CollateralUnavailableError
from attestation.tdx.base import (
    COLLATERAL_FORMAT_VERSION,
    Collateral,
    CollateralError,
    CollateralKey,
    CollateralStatus,
    CollateralStore,
    StoredCollateral,
    TcbUpdateType,
)
from attestation.tdx.dcap import intel_root_ca_der
from attestation.tdx.pck import CaType

_logger = logging.getLogger(__name__)

__all__ = [
    "ALIBABA_CLOUD_PCCS_URL",
    "DEFAULT_PCCS_URLS",
    "INTEL_PCS_URL",
    "MAX_CHAIN_HEADER_BYTES",
    "MAX_CRL_BYTES",
    "MAX_JSON_BYTES",
    "CachingCollateralSource",
    "CollateralFetcher",
    "CollateralObserver",
    "FetchedCollateral",
    "MemoryCollateralStore",
    "PccsFetcher",
    "RefreshReport",
]

ALIBABA_CLOUD_PCCS_URL: Final = (
    "https://sgx-dcap-server.cn-beijing.aliyuncs.com/sgx/certification/v4/"
)
INTEL_PCS_URL: Final = "https://api.trustedservices.intel.com/sgx/certification/v4/"
DEFAULT_PCCS_URLS: Final = (ALIBABA_CLOUD_PCCS_URL,)
#: Intel's PCS has no ``rootcacrl`` endpoint; the root CRL comes from the root's CDP.
_INTEL_PCS_HOST: Final = "api.trustedservices.intel.com"

#: TCB Info / QE Identity bodies are about 10 KiB.
MAX_JSON_BYTES: Final = 1024 * 1024
#: The Intel PCK CRLs are small today; leave room for growth.
MAX_CRL_BYTES: Final = 4 * 1024 * 1024
#: A URL-encoded two-certificate PEM chain is about 3 KiB.
MAX_CHAIN_HEADER_BYTES: Final = 64 * 1024
DEFAULT_TIMEOUT: Final = 10.0

_TCB_CHAIN_HEADERS: Final = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
_QE_CHAIN_HEADER: Final = "SGX-Enclave-Identity-Issuer-Chain"
_PCK_CRL_CHAIN_HEADER: Final = "SGX-PCK-CRL-Issuer-Chain"
_HEX_DIGITS: Final = frozenset(string.hexdigits.encode())


class _FetchError(Exception):
    """One PCCS request failed (message is short and safe to log and show on /readyz)."""


@dataclass(frozen=True, slots=True)
class FetchedCollateral:
    """Collateral just fetched, with where it came from."""

    collateral: Collateral
    source_url: str


class CollateralFetcher(Protocol):
    """Fetches fresh collateral for a key (a PCCS client)."""

    async def fetch(self, key: CollateralKey) -> FetchedCollateral:
        """Fetch, parse and check collateral for ``key``.

        Raises:
            CollateralUnavailableError: no source returned usable collateral.
        """
        ...


class CollateralObserver(Protocol):
    """Told about PCCS requests and cache lookups (the application counts them).

    ``endpoint`` is one of ``pckcrl``, ``tcb``, ``qe_identity``, ``rootcacrl`` and
    ``root_ca_cdp``; ``result`` one of ``hit``, ``stale`` and ``miss``. Observers must
    not raise.
    """

    def pccs_request(self, endpoint: str, *, ok: bool) -> None:
        """One HTTP request to a PCCS finished (``ok``: HTTP 200 within the size cap)."""
        ...

    def collateral_lookup(self, result: Literal["hit", "stale", "miss"]) -> None:
        """One :meth:`CachingCollateralSource.get_collateral` call, and what it found."""
        ...


class _NoObserver:
    def pccs_request(self, endpoint: str, *, ok: bool) -> None:
        del endpoint, ok

    def collateral_lookup(self, result: Literal["hit", "stale", "miss"]) -> None:
        del result


def _pccs_root(base_url: str) -> str:
    # Accept ".../sgx/certification/v4/", ".../tdx/certification/v4" or a bare host.
    root = base_url.rstrip("/")
    for suffix in ("/sgx/certification/v4", "/tdx/certification/v4"):
        if root.endswith(suffix):
            return root[: -len(suffix)]
    return root


def _crl_der(body: bytes) -> bytes:
    """PCCS sends CRLs as DER, as hex text of the DER, or as PEM; return DER."""
    stripped = body.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            return x509.load_pem_x509_crl(stripped).public_bytes(serialization.Encoding.DER)
        except ValueError as exc:
            raise _FetchError("crl is not valid pem") from exc
    if stripped and set(stripped) <= _HEX_DIGITS and len(stripped) % 2 == 0:
        return bytes.fromhex(stripped.decode("ascii"))
    return body


def _cdp_url(root_ca_der: bytes) -> str:
    """The CRL distribution point of the trust anchor.

    Taken from the anchor itself, not from a PCCS-supplied chain, so a hostile PCCS
    cannot send us to a URL of its choice.
    """
    try:
        root = x509.load_der_x509_certificate(root_ca_der)
        points = root.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise _FetchError("root certificate has no crl distribution point") from exc
    for point in points:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier):
                return name.value
    raise _FetchError("root certificate has no crl distribution point url")


def _json_body(body: bytes, field: str) -> tuple[str, bytes]:
    """Split a PCS ``{"<field>": {...}, "signature": "<hex>"}`` body."""
    try:
        document = json.loads(body)
        signed = document[field]
        signature = bytes.fromhex(document["signature"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _FetchError(f"{field} response is malformed") from exc
    if not isinstance(signed, dict):
        raise _FetchError(f"{field} response is malformed")
    # Intel signs the compact serialisation with keys in their original order (this is
    # also what dcap-qvl's own fetcher hands to its verifier).
    return json.dumps(signed, separators=(",", ":"), ensure_ascii=False), signature


_T = TypeVar("_T")


async def _all_or_nothing(*calls: Coroutine[Any, Any, _T]) -> list[_T]:
    """Await every call concurrently; on the first failure cancel (and await) the rest."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _request_deadline(timeout: httpx.Timeout) -> float | None:
    """Seconds one whole request may take: connect + 2 x read (``None``: unbounded)."""
    if timeout.read is None:
        return None
    return (timeout.connect or 0.0) + 2 * timeout.read


class PccsFetcher:
    """Fetches DCAP collateral from an ordered list of PCCS / Intel PCS base URLs."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_urls: Sequence[str] = DEFAULT_PCCS_URLS,
        root_ca_der: bytes | None = None,
        tcb_update_type: TcbUpdateType = "standard",
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        observer: CollateralObserver | None = None,
    ) -> None:
        """Create a fetcher.

        Args:
            client: the HTTP client (the application owns its lifecycle and TLS settings).
            base_urls: PCCS/PCS base URLs, tried in order (e.g. Alibaba Cloud's PCCS, then
                Intel's PCS).
            root_ca_der: trust anchor the collateral must chain to (Intel's by default).
            tcb_update_type: which TCB evaluation data set to request.
            timeout: seconds allowed for each step (connect, read, write) of each HTTP
                request, or an ``httpx.Timeout`` with separate limits. Each request as a
                whole also ends after its connect timeout plus twice its read timeout,
                so a server that drips its answer cannot hold a fetch open.
            observer: told about every HTTP request (for metrics).

        Raises:
            ValueError: no base URL, or one that is not http(s).
        """
        if not base_urls:
            raise ValueError("at least one pccs url is required")
        for url in base_urls:
            if urlsplit(url).scheme not in ("https", "http"):
                raise ValueError(f"pccs url must be http(s): {url!r}")
        self._client = client
        self._base_urls = tuple(base_urls)
        self._root_ca_der = intel_root_ca_der() if root_ca_der is None else root_ca_der
        self.tcb_update_type: TcbUpdateType = tcb_update_type
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._deadline_s = _request_deadline(self._timeout)
        self._observer: CollateralObserver = observer or _NoObserver()

    @property
    def base_urls(self) -> tuple[str, ...]:
        """The configured base URLs, in failover order."""
        return self._base_urls

    async def fetch(self, key: CollateralKey) -> FetchedCollateral:
        """Fetch collateral for ``key``, trying each base URL in order.

        Raises:
            CollateralUnavailableError: every base URL failed (the message lists why).
        """
        failures: list[str] = []
        for base in self._base_urls:
            try:
                collateral = await self._fetch_from(base, key)
            except _FetchError as exc:
                _logger.warning("collateral for %s from %s failed: %s", key, base, exc)
                failures.append(f"{base}: {exc}")
                continue
            return FetchedCollateral(collateral=collateral, source_url=base)
        raise CollateralUnavailableError(
            f"could not fetch collateral for {key}: " + "; ".join(failures)
        )

    async def get_collateral(self, fmspc: str, ca: CaType, *, at: dt.datetime) -> Collateral:
        """Uncached :class:`~attestation.tdx.base.CollateralSource`: fetch every time.

        Raises:
            CollateralUnavailableError: fetching failed or returned collateral not valid at ``at``.
        """
        fetched = await self.fetch(CollateralKey(fmspc, ca, self.tcb_update_type))
        if not fetched.collateral.valid_at(at):
            raise CollateralUnavailableError(
                f"pccs returned collateral not valid at {at.isoformat()}"
            )
        return fetched.collateral

    async def _get(
        self, endpoint: str, url: str, params: Mapping[str, str] | None, limit: int
    ) -> tuple[bytes, httpx.Headers]:
        ok = False
        try:
            result = await self._get_once(url, params, limit)
            ok = True
        finally:
            self._observer.pccs_request(endpoint, ok=ok)
        return result

    async def _get_once(
        self, url: str, params: Mapping[str, str] | None, limit: int
    ) -> tuple[bytes, httpx.Headers]:
        try:
            async with asyncio.timeout(self._deadline_s):
                return await self._get_unbounded(url, params, limit)
        except TimeoutError as exc:
            raise _FetchError(f"{urlsplit(url).path}: no complete answer in time") from exc

    async def _get_unbounded(
        self, url: str, params: Mapping[str, str] | None, limit: int
    ) -> tuple[bytes, httpx.Headers]:
        try:
            async with self._client.stream(
                "GET", url, params=params, timeout=self._timeout, follow_redirects=False
            ) as response:
                if response.status_code != httpx.codes.OK:
                    raise _FetchError(f"{urlsplit(url).path}: HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise _FetchError(f"{urlsplit(url).path}: response too large")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise _FetchError(f"{urlsplit(url).path}: response too large")
                return bytes(body), response.headers
        except httpx.HTTPError as exc:
            raise _FetchError(f"{urlsplit(url).path}: {type(exc).__name__}") from exc

    @staticmethod
    def _chain(headers: httpx.Headers, names: Sequence[str]) -> str:
        for name in names:
            value = headers.get(name)
            if value is not None:
                if len(value) > MAX_CHAIN_HEADER_BYTES:
                    raise _FetchError(f"{name} header too large")
                return unquote(value)
        raise _FetchError(f"response lacks {names[0]} header")

    async def _fetch_from(self, base: str, key: CollateralKey) -> Collateral:
        root = _pccs_root(base)
        is_intel_pcs = urlsplit(base).hostname == _INTEL_PCS_HOST
        update = {"update": key.tcb_update_type}
        # 1. The three signed pieces, concurrently. If one fails the others are cancelled:
        #    no request of a failed attempt outlives it (nor overlaps the next base URL).
        (pck_crl, pck_headers), (tcb, tcb_headers), (qe, qe_headers) = await _all_or_nothing(
            self._get(
                "pckcrl",
                f"{root}/sgx/certification/v4/pckcrl",
                {"ca": key.ca, "encoding": "der"},
                MAX_CRL_BYTES,
            ),
            self._get(
                "tcb",
                f"{root}/tdx/certification/v4/tcb",
                {"fmspc": key.fmspc, **update},
                MAX_JSON_BYTES,
            ),
            self._get(
                "qe_identity", f"{root}/tdx/certification/v4/qe/identity", update, MAX_JSON_BYTES
            ),
        )
        tcb_info, tcb_signature = _json_body(tcb, "tcbInfo")
        qe_identity, qe_signature = _json_body(qe, "enclaveIdentity")
        qe_chain = self._chain(qe_headers, (_QE_CHAIN_HEADER,))
        # 2. The root CA CRL: a PCCS serves it (as hex); Intel's PCS does not, so use the
        #    trust anchor's CRL distribution point (also the fallback, like dcap-qvl).
        root_crl: bytes | None = None
        if not is_intel_pcs:
            try:
                root_crl, _ = await self._get(
                    "rootcacrl", f"{root}/sgx/certification/v4/rootcacrl", None, MAX_CRL_BYTES
                )
            except _FetchError as exc:
                _logger.info("rootcacrl from %s failed (%s); trying the root's cdp", base, exc)
        if root_crl is None:
            root_crl, _ = await self._get(
                "root_ca_cdp", _cdp_url(self._root_ca_der), None, MAX_CRL_BYTES
            )
        # 3. Parse and check everything up to the trust anchor.
        try:
            collateral = Collateral.from_parts(
                key,
                tcb_info=tcb_info,
                tcb_info_signature=tcb_signature,
                tcb_info_issuer_chain=self._chain(tcb_headers, _TCB_CHAIN_HEADERS),
                qe_identity=qe_identity,
                qe_identity_signature=qe_signature,
                qe_identity_issuer_chain=qe_chain,
                pck_crl=_crl_der(pck_crl),
                pck_crl_issuer_chain=self._chain(pck_headers, (_PCK_CRL_CHAIN_HEADER,)),
                root_ca_crl=_crl_der(root_crl),
            )
            collateral.check_signatures(self._root_ca_der)
        except CollateralError as exc:
            raise _FetchError(str(exc)) from exc
        return collateral


# ------------------------------------------------------------------------ cache


@dataclass(frozen=True, slots=True)
class RefreshReport:
    """What one :meth:`CachingCollateralSource.refresh_due` pass did."""

    refreshed: tuple[CollateralKey, ...]
    failed: tuple[CollateralKey, ...]


@dataclass(slots=True)
class _Entry:
    collateral: Collateral | None = None
    fetched_at: dt.datetime | None = None
    source_url: str | None = None
    last_attempt_at: dt.datetime | None = None
    last_error: str | None = None
    last_error_at: dt.datetime | None = None
    # [fresh_from, fresh_until): served with no I/O. fresh_until is the refresh time,
    # never after any nextUpdate, so inside the window the collateral is also valid.
    fresh_from: dt.datetime | None = None
    fresh_until: dt.datetime | None = None


class MemoryCollateralStore:
    """A :class:`~attestation.tdx.base.CollateralStore` in a dict (tests, single process)."""

    def __init__(self) -> None:
        """Create an empty store."""
        self.items: dict[CollateralKey, StoredCollateral] = {}
        self.saves = 0

    async def load(self, key: CollateralKey) -> StoredCollateral | None:
        """Return the stored collateral for ``key``, or ``None``."""
        return self.items.get(key)

    async def save(self, key: CollateralKey, stored: StoredCollateral) -> None:
        """Store the collateral for ``key``."""
        self.items[key] = stored
        self.saves += 1


#: Bound on cached keys (real deployments see a handful of platforms).
MAX_CACHED_KEYS: Final = 256


class CachingCollateralSource:
    """A :class:`~attestation.tdx.base.CollateralSource` that caches, persists and refreshes.

    An entry is *fresh* until ``refresh_at = min(fetched_at + max_age, next_update -
    refresh_margin)`` and *valid* while dcap-qvl still accepts its dates. Fresh entries
    are served with no I/O. Stale-but-valid entries are served at once and start a
    background refresh (at most one per ``retry_interval``). Without a valid entry, the
    store is consulted, then the PCCS; if both fail, :class:`CollateralUnavailableError`.
    """

    def __init__(
        self,
        fetcher: CollateralFetcher,
        *,
        store: CollateralStore | None = None,
        root_ca_der: bytes | None = None,
        tcb_update_type: TcbUpdateType = "standard",
        max_age: dt.timedelta = dt.timedelta(hours=12),
        refresh_margin: dt.timedelta = dt.timedelta(hours=24),
        retry_interval: dt.timedelta = dt.timedelta(seconds=60),
        observer: CollateralObserver | None = None,
    ) -> None:
        """Create the cache.

        Args:
            fetcher: where fresh collateral comes from (a :class:`PccsFetcher`).
            store: persistence shared by replicas; ``None`` keeps collateral in memory only.
            root_ca_der: trust anchor stored collateral is re-checked against on load
                (Intel's by default).
            tcb_update_type: the TCB evaluation data set (part of the cache key).
            max_age: refresh collateral at least this often (new CRLs, TCB recoveries).
            refresh_margin: refresh at least this long before the earliest ``nextUpdate``.
            retry_interval: minimum time between two PCCS attempts for one key.
            observer: told what every lookup found (for metrics).

        Raises:
            ValueError: ``max_age`` is not positive or ``refresh_margin`` is negative.
        """
        self._fetcher = fetcher
        self._store = store
        self._root_ca_der = intel_root_ca_der() if root_ca_der is None else root_ca_der
        self._update_type: TcbUpdateType = tcb_update_type
        self._max_age = max_age
        if max_age <= dt.timedelta(0) or refresh_margin < dt.timedelta(0):
            raise ValueError("max_age must be positive and refresh_margin not negative")
        self._margin = refresh_margin
        self._retry = retry_interval
        self._entries: OrderedDict[CollateralKey, _Entry] = OrderedDict()
        self._keys: dict[tuple[str, str], CollateralKey] = {}
        self._inflight: dict[CollateralKey, asyncio.Task[None]] = {}
        self._observer: CollateralObserver = observer or _NoObserver()

    # ---------------------------------------------------------------- public API

    async def get_collateral(self, fmspc: str, ca: CaType, *, at: dt.datetime) -> Collateral:
        """Return collateral valid at ``at`` for ``fmspc``/``ca`` (see the class docstring).

        Raises:
            CollateralUnavailableError: nothing valid in memory, in the store or from the PCCS.
        """
        key = self._keys.get((fmspc, ca)) or self._new_key(fmspc, ca)
        entry = self._entries.get(key)
        # 1. Fresh in memory: no I/O at all (the hot path: a few comparisons).
        if (
            entry is not None
            and entry.fresh_from is not None
            and entry.fresh_until is not None
            and entry.fresh_from <= at < entry.fresh_until
        ):
            self._entries.move_to_end(key)
            self._observer.collateral_lookup("hit")
            return entry.collateral  # type: ignore[return-value]  # set with fresh_*
        if entry is not None and entry.collateral is not None and entry.collateral.valid_at(at):
            self._entries.move_to_end(key)
            # 2. Stale but valid: serve it now and refresh in the background (rate-limited),
            #    so no guest waits for a PCCS that may be down while valid collateral is
            #    cached. The outcome is recorded for status() and logged.
            if self._may_attempt(entry, at):
                self._refresh_task(key, at)
            self._observer.collateral_lookup("stale")
            return entry.collateral
        # 3. Nothing valid in memory: store, then PCCS (rate-limited after a failure). A
        #    fetch already under way for this key is joined, whenever it started.
        self._observer.collateral_lookup("miss")
        if entry is not None and key not in self._inflight and not self._may_attempt(entry, at):
            raise CollateralUnavailableError(
                f"no valid collateral for {key} (last error: {entry.last_error})"
            )
        try:
            await self._refresh(key, at)
        except CollateralUnavailableError as exc:
            # The store may still have given us something valid (e.g. after a restart).
            collateral = self._valid(key, at)
            if collateral is None:
                raise
            _logger.warning("serving stale stored collateral for %s: %s", key, exc)
            return collateral
        collateral = self._valid(key, at)
        if collateral is None:
            raise CollateralUnavailableError(f"no valid collateral for {key}")
        return collateral

    async def preload(self, keys: Iterable[CollateralKey]) -> int:
        """Load stored collateral for ``keys`` into memory, without asking the PCCS.

        For start-up: :meth:`refresh_due` then keeps these platforms fresh before their
        first quote arrives, and :meth:`status` reports them. Stored collateral is parsed
        and signature-checked as on every load; keys of another TCB update type are
        skipped. A store failure is logged and that key skipped.

        Returns:
            How many entries were loaded.
        """
        loaded = 0
        for key in keys:
            if key.tcb_update_type != self._update_type:
                continue
            stored = await self._load_stored(key)
            if stored is None:
                continue
            entry = self._entry(key)
            if self._newer(stored[0], entry):
                self._adopt(entry, *stored)
                loaded += 1
        return loaded

    async def refresh_due(self, at: dt.datetime) -> RefreshReport:
        """Refresh every cached entry that is due (call this from a periodic task).

        Never raises for PCCS failures: they are recorded for :meth:`status` and logged.
        """
        due = [
            key
            for key, entry in self._entries.items()
            if (entry.collateral is None or at >= self._refresh_at(entry))
            and self._may_attempt(entry, at)
        ]
        results = await asyncio.gather(
            *(self._refresh(key, at) for key in due), return_exceptions=True
        )
        refreshed, failed = [], []
        for key, result in zip(due, results, strict=True):
            if isinstance(result, CollateralUnavailableError):
                failed.append(key)
            elif isinstance(result, BaseException):
                raise result
            else:
                refreshed.append(key)
        return RefreshReport(refreshed=tuple(refreshed), failed=tuple(failed))

    async def aclose(self) -> None:
        """Cancel fetches still under way (call before closing the HTTP client)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def status(self, at: dt.datetime) -> tuple[CollateralStatus, ...]:
        """Freshness of every cached entry at ``at`` (for a readiness endpoint)."""
        out = []
        for key in sorted(self._entries):
            entry = self._entries[key]
            collateral = entry.collateral
            refresh_at = self._refresh_at(entry) if collateral is not None else None
            out.append(
                CollateralStatus(
                    key=key,
                    fetched_at=entry.fetched_at,
                    next_update=collateral.next_update if collateral else None,
                    refresh_at=refresh_at,
                    expires=collateral.next_update if collateral else None,
                    source_url=entry.source_url,
                    fresh=refresh_at is not None and at < refresh_at,
                    valid=collateral is not None and collateral.valid_at(at),
                    last_error=entry.last_error,
                    last_error_at=entry.last_error_at,
                )
            )
        return tuple(out)

    # ---------------------------------------------------------------- internals

    def _new_key(self, fmspc: str, ca: CaType) -> CollateralKey:
        key = CollateralKey(fmspc, ca, self._update_type)  # validates
        if len(self._keys) < MAX_CACHED_KEYS * 4:
            self._keys[fmspc, ca] = key
        return key

    def _adopt(
        self, entry: _Entry, collateral: Collateral, fetched_at: dt.datetime, source_url: str
    ) -> None:
        entry.collateral, entry.fetched_at, entry.source_url = collateral, fetched_at, source_url
        entry.fresh_from = collateral.issued_at
        entry.fresh_until = self._refresh_at(entry)

    def _refresh_at(self, entry: _Entry) -> dt.datetime:
        assert entry.collateral is not None
        assert entry.fetched_at is not None
        return min(entry.fetched_at + self._max_age, entry.collateral.next_update - self._margin)

    def _may_attempt(self, entry: _Entry, at: dt.datetime) -> bool:
        return entry.last_attempt_at is None or at >= entry.last_attempt_at + self._retry

    def _valid(self, key: CollateralKey, at: dt.datetime) -> Collateral | None:
        entry = self._entries.get(key)
        if entry is None or entry.collateral is None or not entry.collateral.valid_at(at):
            return None
        return entry.collateral

    def _entry(self, key: CollateralKey) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
            while len(self._entries) > MAX_CACHED_KEYS:
                self._entries.popitem(last=False)
        return entry

    async def _refresh(self, key: CollateralKey, at: dt.datetime) -> None:
        # One refresh per key at a time; everyone else awaits the same task. The task is
        # shielded so that a cancelled request does not cancel the shared fetch.
        await asyncio.shield(self._refresh_task(key, at))

    def _refresh_task(self, key: CollateralKey, at: dt.datetime) -> asyncio.Task[None]:
        """The refresh of ``key`` under way, or a new one."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._do_refresh(key, at))
            self._inflight[key] = task

            def _done(finished: asyncio.Task[None], key: CollateralKey = key) -> None:
                if self._inflight.get(key) is finished:
                    del self._inflight[key]
                if not finished.cancelled():
                    exc = finished.exception()  # retrieved even if nobody awaits it
                    if isinstance(exc, CollateralUnavailableError):
                        _logger.warning("collateral refresh for %s failed: %s", key, exc)

            task.add_done_callback(_done)
        return task

    async def _do_refresh(self, key: CollateralKey, at: dt.datetime) -> None:
        entry = self._entry(key)
        # 1. The shared store first: another replica (or our previous life) may have it.
        stored = await self._load_stored(key)
        if stored is not None and self._newer(stored[0], entry):
            self._adopt(entry, *stored)
            if stored[0].valid_at(at) and at < self._refresh_at(entry):
                return
        # 2. The PCCS.
        entry.last_attempt_at = at
        try:
            fetched = await self._fetcher.fetch(key)
            self._check_fetched(key, fetched.collateral, entry, at)
        except CollateralUnavailableError as exc:
            entry.last_error = str(exc)[:500]
            entry.last_error_at = at
            raise
        self._adopt(entry, fetched.collateral, at, fetched.source_url)
        entry.last_error = entry.last_error_at = None
        _logger.info(
            "collateral for %s refreshed from %s (next update %s)",
            key,
            fetched.source_url,
            fetched.collateral.next_update,
        )
        await self._save(key, entry)

    @staticmethod
    def _check_fetched(
        key: CollateralKey, fetched: Collateral, entry: _Entry, at: dt.datetime
    ) -> None:
        if not fetched.valid_at(at):
            raise CollateralUnavailableError(f"pccs collateral for {key} is not valid now")
        current = entry.collateral
        # TCB evaluation data numbers only grow; an older set is a rollback (stale mirror).
        if current is not None and (
            fetched.tcb_evaluation_data_number < current.tcb_evaluation_data_number
        ):
            raise CollateralUnavailableError(f"pccs collateral for {key} is older than cached")

    @staticmethod
    def _newer(collateral: Collateral, entry: _Entry) -> bool:
        current = entry.collateral
        return current is None or (
            collateral.next_update,
            collateral.tcb_evaluation_data_number,
        ) > (
            current.next_update,
            current.tcb_evaluation_data_number,
        )

    async def _load_stored(self, key: CollateralKey) -> tuple[Collateral, dt.datetime, str] | None:
        if self._store is None:
            return None
        try:
            stored = await self._store.load(key)
        except Exception:  # a store outage must not stop attestation
            _logger.warning("loading collateral for %s from the store failed", key, exc_info=True)
            return None
        if stored is None or stored.format_version != COLLATERAL_FORMAT_VERSION:
            return None
        try:
            collateral = Collateral.from_qvl_json(stored.collateral_json, key=key)
            collateral.check_signatures(self._root_ca_der)
        except CollateralError:
            _logger.warning("stored collateral for %s is unusable; ignoring it", key, exc_info=True)
            return None
        return collateral, stored.fetched_at, stored.source_url

    async def _save(self, key: CollateralKey, entry: _Entry) -> None:
        if self._store is None or entry.collateral is None or entry.fetched_at is None:
            return
        stored = StoredCollateral(
            collateral_json=entry.collateral.qvl_json,
            fetched_at=entry.fetched_at,
            next_update=entry.collateral.next_update,
            source_url=entry.source_url or "",
        )
        try:
            await self._store.save(key, stored)
        except Exception:
            _logger.warning("saving collateral for %s to the store failed", key, exc_info=True)
