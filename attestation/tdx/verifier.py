# SPDX-License-Identifier: Apache-2.0
"""The ``tdx`` verifier: Intel TDX evidence from a confidential VM, checked like Trustee does.

Evidence (what the guest's attestation agent sends)::

    {"quote": "<standard base64 TD quote>", "cc_eventlog": "<standard base64 CCEL>" | null}

Steps, in the reference's order (confidential-containers/trustee
``deps/verifier/src/tdx/mod.rs``), each numbered in :meth:`TdxVerifier._verify`:

1. parse the evidence JSON: a non-empty quote, strict base64, size caps;
2. parse the quote: v4 or v5 (TD report 1.0, 1.5, 1.5 "ex"), tee_type 0x81;
3. find collateral for its platform: the PCK chain must lead to the trust anchor (checked
   before any PCCS request), then FMSPC and CA type select the collateral;
4. DCAP verification at ``at`` (dcap-qvl): terminal results fail, TCB statuses become
   claims;
5. REPORT_DATA must equal the runtime-data digest, zero-padded to 64 bytes;
6. MR_CONFIG_ID must equal the init-data digest, zero-padded to 48 bytes;
7. the CC event log, if any, must replay (SHA-384, CC MR 1..4) to RTMR0..RTMR3;
8. claims: the parsed quote, TD attributes, event log, DCAP claims, and ``report_data`` /
   ``init_data`` at the top level for the appraisal to lift.

Steps 4-7 are CPU-bound and synchronous; they run inline by default, or in an injected
``concurrent.futures.Executor`` (normally a :class:`~attestation.tdx.pool.VerificationPool`
of worker processes). What crosses to the worker is small and picklable: the quote bytes,
the collateral's digest (its dcap-qvl JSON only the first time a worker meets it: each
worker keeps parsed collateral by digest), the trust anchor DER, the verification time
(the caller's, never the worker's clock), the platform policy, the expected digests and the
event log bytes. The worker parses the quote again (tens of microseconds, cheaper than
pickling the parsed form) and keeps parsed PCK chains; it returns the DCAP result and the
event log claims, so the claims are the same as inline. A worker that dies fails the
attestation with ``VerifierUnavailableError``.
"""

from __future__ import annotations

import asyncio
import binascii
import datetime as dt
import functools
import hashlib
import hmac
import json
import logging
from concurrent.futures import BrokenExecutor, Executor
from dataclasses import dataclass
from typing import Any, Final, Literal

from attestation.base import MAX_EVIDENCE_BYTES, NotProvided, VerifiedClaims, Verifier
from attestation.errors import (
    BindingMismatchError,
    EvidenceInvalidError,
    VerifierUnavailableError,
)
from attestation.lru import Lru
from attestation.tdx.base import Collateral, CollateralSource
from attestation.tdx.dcap import DcapResult, PlatformPolicy, intel_root_ca_der, verify_quote
from attestation.tdx.eventlog import EventLog, parse_event_log
from attestation.tdx.pck import PckChain, check_chain_root, parse_pck_chain
from attestation.tdx.quote import (
    MAX_QUOTE_BYTES,
    Quote,
    parse_quote,
    quote_claims,
    td_attributes_claims,
)

_logger = logging.getLogger(__name__)

__all__ = ["MAX_EVENTLOG_BYTES", "TdxVerifier", "check_evidence"]

#: The CCEL ACPI table is 64 KiB on OVMF/TDVF and 1 MiB on td-shim; GCP logs reach 2 MiB.
MAX_EVENTLOG_BYTES: Final = MAX_EVIDENCE_BYTES
REPORT_DATA_SIZE: Final = 64
MR_CONFIG_ID_SIZE: Final = 48
#: Verified PCK chains remembered per verifier (one per platform in practice).
PCK_CACHE_SIZE: Final = 1024
#: Parsed collateral a worker process keeps, by digest (one per platform and refresh).
WORKER_COLLATERAL_CACHE_SIZE: Final = 64
#: Parsed CC event logs remembered per process, by the SHA-256 of the log's bytes. Guests
#: booted from one image send the same firmware log; parsing it (and hashing every event)
#: costs about as much as the DCAP verification itself. The replay against the quote's
#: RTMRs is still done for every quote.
EVENT_LOG_CACHE_SIZE: Final = 32


@dataclass(frozen=True, slots=True)
class _Evidence:
    quote: bytes
    cc_eventlog: bytes | None


def a2b_base64_strict(value: str) -> bytes:
    """``binascii.a2b_base64(value, strict_mode=True)``, faster on padded event logs.

    A CC event log is the ACPI CCEL table as read: its events, then up to a MiB of fill
    (zeros or 0xFF), which is a run of one base64 character. When the characters before
    the final 4-character group end in such a run (at least :data:`_RUN_MIN_GROUPS`
    whole groups, found with one substring search and checked with one comparison), the
    run is expanded instead of decoded: each of its groups is the same 3 bytes. Anything
    else (a length not a multiple of 4, ``=`` before the final group, no single run to
    the end) is decoded whole, so the result, and every error, is the strict decoder's.

    Raises:
        binascii.Error: not strict standard base64.
        ValueError: non-ASCII characters.
    """
    head, tail = value[:-4], value[-4:]
    fill = head[-1:]
    if len(value) % 4 or fill in ("", "="):
        return binascii.a2b_base64(value, strict_mode=True)
    found = head.find(fill * (4 * _RUN_MIN_GROUPS))
    start = -(-found // 4) * 4  # the first whole group of the run
    groups = (len(head) - start) // 4
    if (
        found < 0
        or groups < _RUN_MIN_GROUPS
        or not _run_to_end(head, fill, start)
        or "=" in head[:start]
    ):
        return binascii.a2b_base64(value, strict_mode=True)
    return b"".join(
        (
            binascii.a2b_base64(head[:start], strict_mode=True),
            binascii.a2b_base64(fill * 4, strict_mode=True) * groups,
            binascii.a2b_base64(tail, strict_mode=True),
        )
    )


#: Shortest run of repeated 4-character groups :func:`a2b_base64_strict` expands.
_RUN_MIN_GROUPS: Final = 256
#: Characters compared at once when checking a run.
_RUN_CHUNK: Final = 64 * 1024


def _run_to_end(text: str, fill: str, start: int) -> bool:
    """Whether ``text[start:]`` is all ``fill`` (compared in place, chunk by chunk)."""
    chunk = fill * _RUN_CHUNK
    return all(
        text.startswith(chunk[: len(text) - pos], pos)
        for pos in range(start, len(text), _RUN_CHUNK)
    )


def _b64(value: str, field: str, limit: int) -> bytes:
    # Cap before decoding: base64 is 4 characters per 3 bytes.
    if len(value) > (limit + 2) // 3 * 4:
        raise EvidenceInvalidError(f"tdx evidence {field} is too large")
    try:
        # strict_mode: only the standard alphabet, correct padding, nothing after it (as
        # strict as b64decode(validate=True), and without its extra regex pass).
        return a2b_base64_strict(value)
    except (binascii.Error, ValueError) as exc:
        raise EvidenceInvalidError(f"tdx evidence {field} is not standard base64") from exc


def _parse_evidence(evidence: Any, max_quote: int, max_eventlog: int) -> _Evidence:
    if isinstance(evidence, str):
        # Some clients send the evidence object as a JSON string.
        if len(evidence) > MAX_EVIDENCE_BYTES * 2:
            raise EvidenceInvalidError("tdx evidence is too large")
        try:
            evidence = json.loads(evidence)
        except (ValueError, RecursionError) as exc:
            raise EvidenceInvalidError("tdx evidence is not json") from exc
    if not isinstance(evidence, dict):
        raise EvidenceInvalidError("tdx evidence must be a json object")
    quote = evidence.get("quote")
    if not isinstance(quote, str):
        raise EvidenceInvalidError("tdx evidence lacks a quote string")
    if not quote:
        raise EvidenceInvalidError("tdx quote is empty")
    eventlog = evidence.get("cc_eventlog")
    if eventlog is not None and not isinstance(eventlog, str):
        raise EvidenceInvalidError("tdx evidence cc_eventlog must be a string or null")
    return _Evidence(
        quote=_b64(quote, "quote", max_quote),
        cc_eventlog=_b64(eventlog, "cc_eventlog", max_eventlog) if eventlog else None,
    )


def _regularize(value: bytes, size: int, what: str) -> bytes:
    """Zero-pad to ``size`` (or truncate, as the reference does, e.g. SHA-512 into 48)."""
    if len(value) > size:
        _logger.warning("%s digest of %d bytes truncated to %d", what, len(value), size)
        return value[:size]
    return value.ljust(size, b"\x00")


def check_evidence(
    raw_quote: bytes,
    quote: Quote,
    pck: PckChain,
    collateral: Collateral,
    *,
    root_ca_der: bytes,
    at: dt.datetime,
    platform_policy: PlatformPolicy,
    report_data: bytes | Literal[NotProvided.MARKER],
    init_data_hash: bytes | Literal[NotProvided.MARKER],
    cc_eventlog: bytes | None,
) -> tuple[DcapResult, EventLog | None]:
    """Steps 4-7 of the verifier: pure, synchronous, and safe to run in a worker.

    Raises:
        EvidenceInvalidError: the quote does not verify or the event log is malformed or
            does not replay to the RTMRs.
        BindingMismatchError: REPORT_DATA or MR_CONFIG_ID is not the expected digest.
    """
    # 4. DCAP: signatures, chains, CRLs, TCB level (terminal results raise).
    dcap = verify_quote(
        raw_quote,
        collateral,
        root_ca_der=root_ca_der,
        at=at,
        platform_policy=platform_policy,
        quote=quote,
        pck=pck,
    )
    report = quote.report
    # 5. REPORT_DATA binds the session (runtime-data digest, zero-padded to 64 bytes).
    if report_data is not NotProvided.MARKER:
        expected = _regularize(report_data, REPORT_DATA_SIZE, "report_data")
        if not hmac.compare_digest(expected, report.report_data):
            raise BindingMismatchError("tdx report_data does not match the runtime data")
    # 6. MR_CONFIG_ID binds the init-data (digest zero-padded to 48 bytes).
    if init_data_hash is not NotProvided.MARKER:
        expected = _regularize(init_data_hash, MR_CONFIG_ID_SIZE, "init_data")
        if not hmac.compare_digest(expected, report.mr_config_id):
            raise BindingMismatchError("tdx mr_config_id does not match the init-data digest")
    # 7. The CC event log must replay to RTMR0..3 (CC MR index 1..4, SHA-384).
    log: EventLog | None = None
    if cc_eventlog is not None:
        log = _parsed_event_log(cc_eventlog)
        log.check_rtmrs(report.rtmrs)
    return dcap, log


_EVENT_LOGS: Final[Lru[bytes, EventLog]] = Lru(EVENT_LOG_CACHE_SIZE)


def _parsed_event_log(raw: bytes) -> EventLog:
    """``parse_event_log(raw)``, remembered (the result is immutable; errors are not kept)."""
    digest = hashlib.sha256(raw).digest()
    log = _EVENT_LOGS.get(digest)
    if log is None:
        log = parse_event_log(raw)
        _EVENT_LOGS.put(digest, log)
    return log


class _CollateralMissingError(Exception):
    """The worker has no collateral with that digest yet: send its JSON."""


# Per worker process (or per process, with a thread pool): parsed collateral by digest
# and parsed PCK chains by PEM. Both are checked by the parent before the job is sent.
_WORKER_COLLATERAL: Final[Lru[bytes, Collateral]] = Lru(WORKER_COLLATERAL_CACHE_SIZE)
_WORKER_CHAINS: Final[Lru[bytes, PckChain]] = Lru(PCK_CACHE_SIZE)


def _worker_collateral(digest: bytes, qvl_json: str | None) -> Collateral:
    collateral = _WORKER_COLLATERAL.get(digest)
    if collateral is not None:
        return collateral
    if qvl_json is None:
        raise _CollateralMissingError
    collateral = Collateral.from_qvl_json(qvl_json)
    if collateral.digest != digest:  # the parent's digest of the same JSON
        raise VerifierUnavailableError("collateral sent to the verification worker is corrupt")
    _WORKER_COLLATERAL.put(digest, collateral)
    return collateral


def _check_in_worker(
    raw_quote: bytes,
    collateral_digest: bytes,
    collateral_json: str | None,
    *,
    root_ca_der: bytes,
    at: dt.datetime,
    platform_policy: PlatformPolicy,
    report_data: bytes | Literal[NotProvided.MARKER],
    init_data_hash: bytes | Literal[NotProvided.MARKER],
    cc_eventlog: bytes | None,
) -> tuple[DcapResult, list[dict[str, Any]] | None]:
    """Steps 4-7 from small, picklable inputs, in a worker; event log claims come back."""
    collateral = _worker_collateral(collateral_digest, collateral_json)
    # Parsed already by the parent (which also checked the PCK chain's root); parsing the
    # bytes again here is cheaper than pickling the parsed objects.
    quote = parse_quote(raw_quote)
    pem = quote.signature_data.pck_chain_pem
    pck = _WORKER_CHAINS.get(pem)
    if pck is None:
        pck = parse_pck_chain(pem)
        _WORKER_CHAINS.put(pem, pck)
    dcap, log = check_evidence(
        raw_quote,
        quote,
        pck,
        collateral,
        root_ca_der=root_ca_der,
        at=at,
        platform_policy=platform_policy,
        report_data=report_data,
        init_data_hash=init_data_hash,
        cc_eventlog=cc_eventlog,
    )
    return dcap, None if log is None else log.to_claims()


class TdxVerifier(Verifier):
    """Verifier for ``tee = "tdx"`` (class ``cpu``)."""

    tee = "tdx"

    def __init__(
        self,
        *,
        collateral: CollateralSource,
        root_ca_der: bytes | None = None,
        platform_policy: PlatformPolicy | None = None,
        executor: Executor | None = None,
        max_quote_bytes: int = MAX_QUOTE_BYTES,
        max_eventlog_bytes: int = MAX_EVENTLOG_BYTES,
    ) -> None:
        """Create the verifier.

        Args:
            collateral: where DCAP collateral comes from (normally a
                :class:`~attestation.tdx.collateral.CachingCollateralSource`).
            root_ca_der: the trust anchor. ``None`` means Intel's SGX Root CA (shipped and
                pinned by fingerprint); anything else is for tests and must be exposed
                only through an ``insecure_*`` setting.
            platform_policy: acceptable PCK platform flags (default: cloud hosts pass).
            executor: where to run the CPU-bound steps 4-7 (normally a
                :class:`~attestation.tdx.pool.VerificationPool`); ``None`` runs them
                inline, on the caller's thread.
            max_quote_bytes: cap on the decoded quote.
            max_eventlog_bytes: cap on the decoded CC event log.
        """
        self._collateral = collateral
        self._root_ca_der = intel_root_ca_der() if root_ca_der is None else root_ca_der
        self._platform_policy = platform_policy or PlatformPolicy()
        self._executor = executor
        self._max_quote = max_quote_bytes
        self._max_eventlog = max_eventlog_bytes
        self._chains: Lru[bytes, PckChain] = Lru(PCK_CACHE_SIZE)

    def _pck_chain(self, quote: Quote) -> PckChain:
        # Keyed by the PEM bytes themselves: an exact match, and hashing them is cheaper
        # than a SHA-256 (the parsed, root-checked chain is reused per platform).
        pem = quote.signature_data.pck_chain_pem
        cached = self._chains.get(pem)
        if cached is not None:
            return cached
        chain = parse_pck_chain(pem)
        check_chain_root(chain, self._root_ca_der)
        self._chains.put(pem, chain)
        return chain

    async def _check_in_executor(
        self,
        executor: Executor,
        parsed: _Evidence,
        collateral: Collateral,
        *,
        at: dt.datetime,
        report_data: bytes | Literal[NotProvided.MARKER],
        init_data_hash: bytes | Literal[NotProvided.MARKER],
    ) -> tuple[DcapResult, list[dict[str, Any]] | None]:
        loop = asyncio.get_running_loop()

        def job(collateral_json: str | None) -> functools.partial[Any]:
            return functools.partial(
                _check_in_worker,
                parsed.quote,
                collateral.digest,
                collateral_json,
                root_ca_der=self._root_ca_der,
                at=at,
                platform_policy=self._platform_policy,
                report_data=report_data,
                init_data_hash=init_data_hash,
                cc_eventlog=parsed.cc_eventlog,
            )

        try:
            try:
                # The digest only: workers keep parsed collateral, so the JSON (tens of
                # KiB) crosses once per worker and collateral version.
                return await loop.run_in_executor(executor, job(None))
            except _CollateralMissingError:
                return await loop.run_in_executor(executor, job(collateral.qvl_json))
        except BrokenExecutor as exc:
            # Fail closed; the pool replaces itself on its next job.
            _logger.warning("tdx verification worker died during a verification: %s", exc)
            raise VerifierUnavailableError("tdx verification worker failed") from exc

    async def _verify(
        self,
        evidence: Any,
        *,
        report_data: bytes | Literal[NotProvided.MARKER],
        init_data_hash: bytes | Literal[NotProvided.MARKER],
        at: dt.datetime,
    ) -> VerifiedClaims:
        # 1. Evidence JSON: non-empty quote, strict base64, size caps.
        parsed = _parse_evidence(evidence, self._max_quote, self._max_eventlog)
        # 2. Quote structure: v4/v5, TD report 1.0/1.5/1.5ex, tee_type 0x81.
        quote = parse_quote(parsed.quote)
        # 3. Platform and collateral: the PCK chain must lead to our root before we spend
        #    a PCCS request on its FMSPC.
        pck = self._pck_chain(quote)
        collateral = await self._collateral.get_collateral(pck.fmspc, pck.ca, at=at)
        # 4.-7. DCAP, REPORT_DATA, MR_CONFIG_ID, event log replay (CPU-bound).
        log_claims: list[dict[str, Any]] | None
        if self._executor is None:
            dcap, log = check_evidence(
                parsed.quote,
                quote,
                pck,
                collateral,
                root_ca_der=self._root_ca_der,
                at=at,
                platform_policy=self._platform_policy,
                report_data=report_data,
                init_data_hash=init_data_hash,
                cc_eventlog=parsed.cc_eventlog,
            )
            log_claims = None if log is None else log.to_claims()
        else:
            dcap, log_claims = await self._check_in_executor(
                self._executor,
                parsed,
                collateral,
                at=at,
                report_data=report_data,
                init_data_hash=init_data_hash,
            )
        # 8. Claims, named as the reference names them.
        report = quote.report
        claims: dict[str, Any] = {}
        if log_claims is not None:
            claims["uefi_event_logs"] = log_claims
        claims["quote"] = quoted = quote_claims(quote)
        claims["td_attributes"] = td_attributes_claims(report.td_attributes)
        claims["report_data"] = quoted["body"]["report_data"]
        claims["init_data"] = quoted["body"]["mr_config_id"]
        if pck.platform_instance_id is not None:
            claims["platform_instance_id"] = pck.platform_instance_id.hex()
        claims.update(dcap.claims())
        return VerifiedClaims(tee=self.tee, tee_class="cpu", claims=claims)
