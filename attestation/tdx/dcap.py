# SPDX-License-Identifier: Apache-2.0
"""The DCAP step: a quote plus collateral plus a trust anchor and a time, in; a verdict out.

Pure and synchronous (no I/O, no clock): :func:`verify_quote` can run inline, in a
thread or in a worker process (all its arguments pickle). The cryptography and the TCB
evaluation are dcap-qvl's (``verify_with_root_ca`` / ``QuoteVerifier``); this module
adds the trust anchor (Intel's root, pinned by fingerprint), the platform-flag policy,
the split between terminal failures (raised) and non-terminal TCB statuses (claims for
the attestation policy, as the reference does), and the reference's supplemental claims.

Cost: every call is exactly one dcap-qvl verification. The supplemental claims
(issue/expiry dates, TCB date, CRL numbers...) depend only on the collateral, the PCK
chain and the quote's TCB SVNs, so they are computed by dcap-qvl's claims API the first
time that combination is seen and memoised; later calls use the plain verify.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.resources
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import dcap_qvl  # type: ignore[import-untyped]  # ships a .pyi but no py.typed marker
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation.errors import CollateralUnavailableError, EvidenceInvalidError
from attestation.lru import Lru
from attestation.tdx.base import Collateral
from attestation.tdx.pck import PckChain, parse_pck_chain
from attestation.tdx.quote import Quote, parse_quote

_logger = logging.getLogger(__name__)

__all__ = [
    "INTEL_SGX_ROOT_CA_SHA256",
    "NON_TERMINAL_TCB_STATUSES",
    "DcapResult",
    "PlatformPolicy",
    "intel_root_ca_der",
    "root_key_id",
    "verify_quote",
]

#: SHA-256 of the DER of Intel's "Intel SGX Root CA" (self-signed, P-256, 2018-05-21 to
#: 2049-12-31; SHA-1 8B:D3:1E:B1:D6:3C:E3:73:82:C0:FF:AA:0D:82:00:A3:01:1A:D6:FF).
INTEL_SGX_ROOT_CA_SHA256: Final = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

#: TCB statuses that verify; the attestation policy decides what to make of them.
NON_TERMINAL_TCB_STATUSES: Final = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "TDRelaunchAdvised",
        "TDRelaunchAdvisedConfigurationNeeded",
    }
)

_SGX_TYPES: Final = {0: "Standard", 1: "Scalable", 2: "Scalable with Integrity"}

#: dcap-qvl error text (substring, lowercase) -> our short reason; first match wins.
_REASONS: Final = (
    ("revoked", "tcb or certificate revoked"),
    ("no matching tcb level", "no matching tcb level"),
    ("no tdx module identity", "no matching tdx module identity"),
    ("debug mode", "debug td is not accepted"),
    ("sept_ve_disable", "td attribute sept_ve_disable is not set"),
    ("profiling", "td profiling is enabled"),
    ("expired", "collateral or certificate expired"),
    ("not valid yet", "collateral or certificate not yet valid"),
    ("notvalidyet", "collateral or certificate not yet valid"),
    ("in the future", "collateral or certificate not yet valid"),
    ("unknownrevocationstatus", "certificate revocation status unknown"),
    ("report hash mismatch", "qe report does not bind the attestation key"),
    ("qe auth data", "qe auth data is malformed"),
    ("fmspc", "fmspc does not match the collateral"),
    ("signature", "invalid signature"),
    ("mismatch", "quote does not match the collateral"),
    ("certificate chain", "pck certificate chain is invalid"),
    ("decode", "quote is malformed"),
)

#: Entries of each memo (per process); a deployment sees a handful of platforms.
MEMO_SIZE: Final = 4096


def intel_root_ca_der() -> bytes:
    """Return the DER of Intel's SGX Root CA shipped with this package.

    Raises:
        RuntimeError: the shipped file does not have the pinned fingerprint.
    """
    der = importlib.resources.files("attestation.tdx").joinpath("intel_sgx_root_ca.der")
    data = der.read_bytes()
    if hashlib.sha256(data).hexdigest() != INTEL_SGX_ROOT_CA_SHA256:
        raise RuntimeError("shipped intel sgx root ca does not match its pinned fingerprint")
    return data


def root_key_id(root_ca_der: bytes) -> str:
    """The reference's ``root_key_id``: SHA-384 of the root's uncompressed public point."""
    key = x509.load_der_x509_certificate(root_ca_der).public_key()
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return hashlib.sha384(point).hexdigest()


@dataclass(frozen=True, slots=True)
class PlatformPolicy:
    """Which PCK platform flags are acceptable.

    Cloud TDX hosts (Alibaba Cloud, GCP, Azure...) have Platform-CA PCK certificates with
    all three flags set, so the defaults accept them; set a flag to ``False`` to refuse
    such platforms. Flags absent from a certificate (Processor CA) count as not set.

    Attributes:
        allow_dynamic_platform: accept platforms whose TCB can change without re-provisioning.
        allow_cached_keys: accept platforms that cache platform root keys.
        allow_smt: accept platforms with simultaneous multithreading enabled.
    """

    allow_dynamic_platform: bool = True
    allow_cached_keys: bool = True
    allow_smt: bool = True

    def check(self, pck: PckChain) -> None:
        """Raise if ``pck`` has a flag this policy refuses.

        Raises:
            EvidenceInvalidError: the platform has a refused flag.
        """
        if pck.dynamic_platform and not self.allow_dynamic_platform:
            raise EvidenceInvalidError("dynamic platform is not allowed by policy")
        if pck.cached_keys and not self.allow_cached_keys:
            raise EvidenceInvalidError("cached keys are not allowed by policy")
        if pck.smt_enabled and not self.allow_smt:
            raise EvidenceInvalidError("smt is not allowed by policy")


@dataclass(frozen=True, slots=True)
class DcapResult:
    """The outcome of a successful DCAP verification.

    Attributes:
        tcb_status: a member of :data:`NON_TERMINAL_TCB_STATUSES`.
        advisory_ids: Intel security advisories that apply (``INTEL-SA-xxxxx``).
        supplemental: the reference's supplemental claims (dates, CRL numbers, ...).
    """

    tcb_status: str
    advisory_ids: tuple[str, ...]
    supplemental: Mapping[str, Any] = field(default_factory=dict)

    def claims(self) -> dict[str, Any]:
        """The claims the reference adds for the DCAP step."""
        return {
            **self.supplemental,
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            # dcap-qvl refuses expired collateral outright, so what verifies never is.
            "collateral_expiration_status": "0",
        }


# Per-process memos of pure functions: parsed dcap-qvl collateral by digest, and the
# collateral- and platform-dependent supplemental claims by everything that determines
# them (shared, read-only: DcapResult.claims() copies).
_QVL_COLLATERAL: Final[Lru[bytes, Any]] = Lru(64)
_SUPPLEMENTAL: Final[Lru[tuple[bytes, ...], Mapping[str, Any]]] = Lru(MEMO_SIZE)


def _qvl_collateral(collateral: Collateral) -> Any:
    cached = _QVL_COLLATERAL.get(collateral.digest)
    if cached is None:
        cached = dcap_qvl.QuoteCollateralV3.from_json(collateral.qvl_json)
        _QVL_COLLATERAL.put(collateral.digest, cached)
    return cached


def _rfc3339(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hex(value: Any) -> str:
    # dcap-qvl's claims JSON writes byte arrays as lists of ints.
    return bytes(value).hex() if isinstance(value, list) else str(value)


def _reason(message: str) -> str:
    lowered = message.lower()
    for needle, reason in _REASONS:
        if needle in lowered:
            return reason
    return "quote verification failed"


def _memo_key(
    quote: Quote, pck: PckChain, collateral: Collateral, root_ca_der: bytes
) -> tuple[bytes, ...]:
    # Everything the TCB level match and the date/CRL claims depend on.
    report = quote.report
    return (
        collateral.digest,
        root_ca_der,  # bytes cache their hash: cheaper than digesting it per call
        pck.digest,
        report.tee_tcb_svn,
        report.tee_tcb_svn2 or b"",
        report.mr_signer_seam,
        report.seam_attributes,
        quote.signature_data.qe_isv_svn.to_bytes(2, "little"),
    )


def _supplemental_from_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    platform = claims["platform"]
    return {
        "earliest_issue_date": _rfc3339(claims["earliest_issue_date"]),
        "latest_issue_date": _rfc3339(claims["latest_issue_date"]),
        "earliest_expiration_date": _rfc3339(claims["earliest_expiration_date"]),
        "tcb_date": _rfc3339(platform["tcb_date_tag"]),
        "pck_crl_num": platform["pck_crl_num"],
        "root_ca_crl_num": platform["root_ca_crl_num"],
        "tcb_eval_num": claims["tcb"]["eval_data_number"],
        "root_key_id": _hex(platform["root_key_id"]),
    }


def _platform_claims(pck: PckChain) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "platform_provider_id": pck.ppid.hex(),
        "sgx_type": _SGX_TYPES.get(pck.sgx_type, f"Unknown ({pck.sgx_type})"),
    }
    if pck.sgx_type > 0:
        claims["is_dynamic_platform"] = bool(pck.dynamic_platform)
        claims["is_cached_keys"] = bool(pck.cached_keys)
        claims["is_smt_enabled"] = bool(pck.smt_enabled)
    return claims


def verify_quote(
    raw_quote: bytes,
    collateral: Collateral,
    *,
    root_ca_der: bytes,
    at: dt.datetime,
    platform_policy: PlatformPolicy,
    quote: Quote | None = None,
    pck: PckChain | None = None,
) -> DcapResult:
    """Verify a TDX quote with DCAP at ``at``.

    Checks, all by dcap-qvl unless noted: the PCK chain up to ``root_ca_der`` with both
    CRLs; TCB Info and QE Identity signatures and dates; the QE report signature and its
    binding of the attestation key; the quote signature; the TCB level of the platform,
    TDX module and QE; and dcap-qvl's TD attribute rules (no DEBUG, SEPT_VE_DISABLE set).
    Then (ours) the platform flags against ``platform_policy``.

    Args:
        raw_quote: the quote bytes.
        collateral: collateral for the quote's FMSPC and PCK CA.
        root_ca_der: the trust anchor (Intel's, see :func:`intel_root_ca_der`).
        at: verification time (timezone-aware; whole seconds are used).
        platform_policy: acceptable platform flags.
        quote: ``raw_quote`` already parsed, to save parsing it again.
        pck: the quote's PCK chain already parsed.

    Returns:
        The TCB status (non-terminal), advisories and supplemental claims.

    Raises:
        EvidenceInvalidError: the quote does not verify, its TCB status is terminal
            (revoked, no matching level), the TD is a debug TD, or a platform flag is
            refused.
        CollateralUnavailableError: dcap-qvl cannot load ``collateral``.
    """
    if at.tzinfo is None:
        raise ValueError("verification time must be timezone-aware")
    now = int(at.timestamp())
    quote = parse_quote(raw_quote) if quote is None else quote
    pck = parse_pck_chain(quote.signature_data.pck_chain_pem) if pck is None else pck
    try:
        qvl_collateral = _qvl_collateral(collateral)
    except ValueError as exc:  # our collateral, not the guest's evidence
        raise CollateralUnavailableError("collateral cannot be loaded by dcap-qvl") from exc
    memo_key = _memo_key(quote, pck, collateral, root_ca_der)
    supplemental = _SUPPLEMENTAL.get(memo_key)

    # 1. The dcap-qvl verification. The first time this platform/TCB meets this
    #    collateral, dcap-qvl's claims API runs as well for the supplemental data; it is
    #    memoised, so the steady state is exactly one verification per quote (and a quote
    #    that fails never costs more than one).
    try:
        report = dcap_qvl.verify_with_root_ca(raw_quote, qvl_collateral, root_ca_der, now)
        status = str(report.status)
        advisories = tuple(report.advisory_ids)
        if supplemental is None:
            policy = dcap_qvl.QuotePolicy.claims_only(now)
            verifier = dcap_qvl.QuoteVerifier(root_ca_der)
            claims = verifier.verify_with_policy(raw_quote, qvl_collateral, now, policy)
            supplemental = {
                **_supplemental_from_claims(json.loads(claims.to_json())),
                **_platform_claims(pck),
            }
            _SUPPLEMENTAL.put(memo_key, supplemental)
    except ValueError as exc:
        reason = _reason(str(exc))
        _logger.info("dcap verification failed (%s): %s", reason, exc)
        raise EvidenceInvalidError(f"tdx quote rejected: {reason}") from exc

    # 2. Terminal statuses never pass (dcap-qvl raises for Revoked already; belt and braces).
    if status not in NON_TERMINAL_TCB_STATUSES:
        raise EvidenceInvalidError(f"tdx quote rejected: terminal tcb status {status}")

    # 3. Platform flags (ours; dcap-qvl's claims-only policy passes them through).
    platform_policy.check(pck)

    return DcapResult(tcb_status=status, advisory_ids=advisories, supplemental=supplemental)
