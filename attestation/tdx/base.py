# SPDX-License-Identifier: Apache-2.0
"""Types shared by the TDX verifier and its collateral sources.

* :class:`Collateral`: immutable, parsed DCAP collateral for one (FMSPC, PCK CA, TCB
  update type), with the dates that decide when it must be refreshed and when it expires.
  It never carries a PCK certificate chain, so one object serves every quote of the FMSPC.
* :class:`CollateralSource`: where the verifier gets collateral (a PCCS, a cache...).
* :class:`CollateralStore`: persistence for the caching source (shared by replicas).

Everything here is pure: parsing and signature checks of bytes already in hand.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.tdx.pck import CaType

_logger = logging.getLogger(__name__)

__all__ = [
    "COLLATERAL_FORMAT_VERSION",
    "Collateral",
    "CollateralError",
    "CollateralKey",
    "CollateralSource",
    "CollateralStatus",
    "CollateralStore",
    "StoredCollateral",
    "TcbUpdateType",
]

TcbUpdateType = Literal["standard", "early"]

#: Version of :attr:`StoredCollateral.collateral_json`'s format (dcap-qvl QuoteCollateralV3).
COLLATERAL_FORMAT_VERSION: Final = 1

_QVL_KEYS: Final = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
_SIGNATURE_SIZE: Final = 64
_PCK_CA_NAMES: Final[dict[str, CaType]] = {
    "Intel SGX PCK Platform CA": "platform",
    "Intel SGX PCK Processor CA": "processor",
}


class CollateralError(ValueError):
    """Collateral bytes are malformed or not signed under the trusted root.

    A ``ValueError`` and not an attestation error on purpose: bad collateral is never the
    guest's fault. Sources turn it into ``CollateralUnavailableError``.
    """


@dataclass(frozen=True, slots=True, order=True)
class CollateralKey:
    """What collateral is cached by.

    Attributes:
        fmspc: the platform's FMSPC, 12 uppercase hex digits.
        ca: which PCK CA issued the platform's PCK certificate.
        tcb_update_type: the PCCS TCB evaluation data set (``standard`` or ``early``).
    """

    fmspc: str
    ca: CaType
    tcb_update_type: TcbUpdateType = "standard"

    def __post_init__(self) -> None:
        """Validate the fields (they end up in URLs and database keys).

        Raises:
            ValueError: a field has an impossible value.
        """
        if len(self.fmspc) != 12 or self.fmspc != self.fmspc.upper():  # noqa: PLR2004
            raise ValueError("fmspc must be 12 uppercase hex digits")
        bytes.fromhex(self.fmspc)
        if self.ca not in ("platform", "processor"):
            raise ValueError("ca must be 'platform' or 'processor'")
        if self.tcb_update_type not in ("standard", "early"):
            raise ValueError("tcb_update_type must be 'standard' or 'early'")

    def __str__(self) -> str:
        """``FMSPC/ca/update``, for logs and status pages."""
        return f"{self.fmspc}/{self.ca}/{self.tcb_update_type}"


def _parse_time(value: Any, what: str) -> dt.datetime:
    if not isinstance(value, str):
        raise CollateralError(f"{what} is not a string")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CollateralError(f"{what} is not an rfc 3339 time") from None
    if parsed.tzinfo is None:
        raise CollateralError(f"{what} has no time zone")
    return parsed.astimezone(dt.UTC)


def _load_chain(pem: str, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise CollateralError(f"{what} is not a pem certificate chain") from None
    if len(certs) < 2:  # noqa: PLR2004
        raise CollateralError(f"{what} is too short")
    return certs


def _load_crl(der: bytes, what: str) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError:
        raise CollateralError(f"{what} is not a der crl") from None
    if crl.next_update_utc is None:
        raise CollateralError(f"{what} has no next update")
    return crl


@dataclass(frozen=True, slots=True)
class Collateral:
    """Parsed, immutable DCAP collateral for one :class:`CollateralKey`.

    Build it with :meth:`from_parts` (from PCCS responses) or :meth:`from_qvl_json`
    (from the dcap-qvl JSON form, as stored). Both check shapes and dates; neither
    checks signatures (see :meth:`check_signatures`).

    Attributes:
        key: what this collateral is for.
        qvl_json: the dcap-qvl ``QuoteCollateralV3`` JSON (hex CRLs and signatures).
        digest: SHA-256 of ``qvl_json``; identifies this collateral in caches.
        tcb_info_issue_date / tcb_info_next_update: dates of the signed TCB Info.
        qe_identity_issue_date / qe_identity_next_update: dates of the QE Identity.
        pck_crl_next_update / root_ca_crl_next_update: when the CRLs stop being valid.
        tcb_evaluation_data_number: the TCB Info's evaluation data number (never decreases).
    """

    key: CollateralKey
    qvl_json: str = field(repr=False)
    digest: bytes = field(repr=False)
    tcb_info_issue_date: dt.datetime
    tcb_info_next_update: dt.datetime
    qe_identity_issue_date: dt.datetime
    qe_identity_next_update: dt.datetime
    pck_crl_this_update: dt.datetime
    pck_crl_next_update: dt.datetime
    root_ca_crl_next_update: dt.datetime
    tcb_evaluation_data_number: int

    @property
    def next_update(self) -> dt.datetime:
        """The earliest ``nextUpdate`` of the four pieces: refresh before this."""
        return min(
            self.tcb_info_next_update,
            self.qe_identity_next_update,
            self.pck_crl_next_update,
            self.root_ca_crl_next_update,
        )

    @property
    def issued_at(self) -> dt.datetime:
        """The later issue date of TCB Info and QE Identity (dcap-qvl refuses future ones)."""
        return max(self.tcb_info_issue_date, self.qe_identity_issue_date)

    def valid_at(self, at: dt.datetime) -> bool:
        """Whether dcap-qvl accepts this collateral's dates at ``at``.

        TCB Info and QE Identity are accepted up to and including ``nextUpdate``; a CRL
        stops being valid at its ``nextUpdate`` exactly.
        """
        return (
            self.issued_at <= at <= self.tcb_info_next_update
            and at <= self.qe_identity_next_update
            and at < self.pck_crl_next_update
            and at < self.root_ca_crl_next_update
        )

    # ------------------------------------------------------------------ building

    @classmethod
    def from_parts(
        cls,
        key: CollateralKey,
        *,
        tcb_info: str,
        tcb_info_signature: bytes,
        tcb_info_issuer_chain: str,
        qe_identity: str,
        qe_identity_signature: bytes,
        qe_identity_issuer_chain: str,
        pck_crl: bytes,
        pck_crl_issuer_chain: str,
        root_ca_crl: bytes,
    ) -> Collateral:
        """Assemble collateral from the pieces a PCCS serves.

        Args:
            key: what the pieces were fetched for.
            tcb_info: the exact signed text of the ``tcbInfo`` object.
            tcb_info_signature: raw r||s (64 bytes).
            tcb_info_issuer_chain: PEM, signing certificate first.
            qe_identity: the exact signed text of the ``enclaveIdentity`` object.
            qe_identity_signature: raw r||s (64 bytes).
            qe_identity_issuer_chain: PEM, signing certificate first.
            pck_crl: DER.
            pck_crl_issuer_chain: PEM, PCK CA first.
            root_ca_crl: DER.

        Raises:
            CollateralError: a piece is malformed or does not belong to ``key``.
        """
        qvl = {
            "pck_crl_issuer_chain": pck_crl_issuer_chain,
            "root_ca_crl": root_ca_crl.hex(),
            "pck_crl": pck_crl.hex(),
            "tcb_info_issuer_chain": tcb_info_issuer_chain,
            "tcb_info": tcb_info,
            "tcb_info_signature": tcb_info_signature.hex(),
            "qe_identity_issuer_chain": qe_identity_issuer_chain,
            "qe_identity": qe_identity,
            "qe_identity_signature": qe_identity_signature.hex(),
        }
        return cls.from_qvl_json(json.dumps(qvl), key=key)

    @classmethod
    def from_qvl_json(
        cls, text: str, *, key: CollateralKey | None = None, update_type: TcbUpdateType = "standard"
    ) -> Collateral:
        """Load collateral from dcap-qvl's ``QuoteCollateralV3`` JSON.

        A ``pck_certificate_chain`` entry is dropped: it would pin the collateral to one
        quote. Without ``key``, the key is read from the TCB Info (FMSPC) and the PCK CRL
        issuer (CA type), with ``update_type``.

        Raises:
            CollateralError: malformed JSON, a missing piece, or a ``key`` mismatch.
        """
        qvl, pck_crl_der, root_crl_der = _qvl_fields(text)
        tcb = _json_object(qvl["tcb_info"], "tcb info")
        qe = _json_object(qvl["qe_identity"], "qe identity")
        fmspc, number = _check_identities(tcb, qe)
        pck_crl = _load_crl(pck_crl_der, "pck crl")
        root_crl = _load_crl(root_crl_der, "root ca crl")
        pck_ca = _load_chain(qvl["pck_crl_issuer_chain"], "pck crl issuer chain")[0]
        cn = pck_ca.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        ca = _PCK_CA_NAMES.get(str(cn[0].value)) if cn else None
        if ca is None:
            raise CollateralError("pck crl issuer is not an intel pck platform/processor ca")
        if key is None:
            key = CollateralKey(fmspc.upper(), ca, update_type)
        elif key.fmspc != fmspc.upper() or key.ca != ca:
            raise CollateralError(f"collateral is for {fmspc.upper()}/{ca}, not {key}")
        canonical = json.dumps(qvl, sort_keys=True)
        assert pck_crl.next_update_utc is not None
        assert root_crl.next_update_utc is not None
        return cls(
            key=key,
            qvl_json=canonical,
            digest=hashlib.sha256(canonical.encode()).digest(),
            tcb_info_issue_date=_parse_time(tcb.get("issueDate"), "tcb info issue date"),
            tcb_info_next_update=_parse_time(tcb.get("nextUpdate"), "tcb info next update"),
            qe_identity_issue_date=_parse_time(qe.get("issueDate"), "qe identity issue date"),
            qe_identity_next_update=_parse_time(qe.get("nextUpdate"), "qe identity next update"),
            pck_crl_this_update=pck_crl.last_update_utc,
            pck_crl_next_update=pck_crl.next_update_utc,
            root_ca_crl_next_update=root_crl.next_update_utc,
            tcb_evaluation_data_number=number,
        )

    # ------------------------------------------------------------------ checking

    def check_signatures(self, root_ca_der: bytes) -> None:
        """Check every signature of this collateral up to ``root_ca_der``.

        dcap-qvl checks all of this again (with dates and revocation) on every verify;
        doing it once when collateral arrives keeps a broken or hostile PCCS from making
        genuine quotes look forged.

        Raises:
            CollateralError: a chain does not end in the root, or a signature is invalid.
        """
        qvl = json.loads(self.qvl_json)
        root = x509.load_der_x509_certificate(root_ca_der)
        try:
            for text, sig, chain in (
                ("tcb_info", "tcb_info_signature", "tcb_info_issuer_chain"),
                ("qe_identity", "qe_identity_signature", "qe_identity_issuer_chain"),
            ):
                signer = _checked_chain(qvl[chain], root, chain)
                raw_sig = bytes.fromhex(qvl[sig])
                der_sig = encode_dss_signature(
                    int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big")
                )
                public_key = signer.public_key()
                if not isinstance(public_key, ec.EllipticCurvePublicKey):
                    raise CollateralError(f"{chain} signer is not an ec key")
                public_key.verify(der_sig, qvl[text].encode(), ec.ECDSA(hashes.SHA256()))
            pck_ca = _checked_chain(qvl["pck_crl_issuer_chain"], root, "pck_crl_issuer_chain")
            crls = (
                (_load_crl(bytes.fromhex(qvl["pck_crl"]), "pck crl"), pck_ca),
                (_load_crl(bytes.fromhex(qvl["root_ca_crl"]), "root ca crl"), root),
            )
            for crl, issuer in crls:
                issuer_key = issuer.public_key()
                if not isinstance(issuer_key, ec.EllipticCurvePublicKey):
                    raise CollateralError("crl issuer is not an ec key")
                if not crl.is_signature_valid(issuer_key):
                    raise CollateralError("crl signature is invalid")
        except (InvalidSignature, UnsupportedAlgorithm, TypeError) as exc:
            raise CollateralError("collateral signature is invalid") from exc


def _qvl_fields(text: str) -> tuple[dict[str, str], bytes, bytes]:
    try:
        raw = json.loads(text)
    except ValueError:
        raise CollateralError("collateral is not json") from None
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in _QVL_KEYS):
        raise CollateralError("collateral lacks a dcap-qvl field")
    qvl = {k: raw[k] for k in _QVL_KEYS}
    try:
        pck_crl_der = bytes.fromhex(qvl["pck_crl"])
        root_crl_der = bytes.fromhex(qvl["root_ca_crl"])
        signatures = [
            bytes.fromhex(qvl[k]) for k in ("tcb_info_signature", "qe_identity_signature")
        ]
    except ValueError:
        raise CollateralError("collateral crl or signature is not hex") from None
    if any(len(s) != _SIGNATURE_SIZE for s in signatures):
        raise CollateralError("collateral signature is not 64 bytes")
    return qvl, pck_crl_der, root_crl_der


def _check_identities(tcb: dict[str, Any], qe: dict[str, Any]) -> tuple[str, int]:
    if tcb.get("id") != "TDX" or not isinstance(tcb.get("version"), int) or tcb["version"] < 3:  # noqa: PLR2004
        raise CollateralError("tcb info is not tdx tcb info v3")
    if qe.get("id") != "TD_QE":
        raise CollateralError("qe identity is not the td qe identity")
    fmspc = tcb.get("fmspc")
    number = tcb.get("tcbEvaluationDataNumber")
    if not isinstance(fmspc, str) or not isinstance(number, int):
        raise CollateralError("tcb info lacks fmspc or evaluation data number")
    return fmspc, number


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise CollateralError(f"{what} is not json") from None
    if not isinstance(value, dict):
        raise CollateralError(f"{what} is not a json object")
    return value


def _checked_chain(pem: str, root: x509.Certificate, what: str) -> x509.Certificate:
    certs = _load_chain(pem, what)
    if certs[-1] != root:
        raise CollateralError(f"{what} does not end in the trusted root")
    try:
        for child, issuer in itertools.pairwise(certs):
            child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CollateralError(f"{what} signature is invalid") from exc
    return certs[0]


@dataclass(frozen=True, slots=True)
class StoredCollateral:
    """What a :class:`CollateralStore` persists for one key.

    Attributes:
        collateral_json: dcap-qvl ``QuoteCollateralV3`` JSON (:attr:`Collateral.qvl_json`).
        fetched_at: when it was fetched from a PCCS (the app's clock).
        next_update: the earliest ``nextUpdate`` of its pieces (for SQL queries/ops).
        source_url: the PCCS base URL it came from.
        format_version: :data:`COLLATERAL_FORMAT_VERSION` of ``collateral_json``.
    """

    collateral_json: str
    fetched_at: dt.datetime
    next_update: dt.datetime
    source_url: str
    format_version: int = COLLATERAL_FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class CollateralStatus:
    """Freshness of one cached collateral entry, for a readiness endpoint.

    Attributes:
        key: the entry.
        fetched_at: when the cached collateral was fetched (``None`` if never).
        next_update: earliest ``nextUpdate`` of the cached pieces.
        refresh_at: when the cache wants a newer copy.
        expires: when dcap-qvl stops accepting the cached copy.
        source_url: where it came from.
        fresh: ``at < refresh_at``.
        valid: the cached copy is usable at ``at``.
        last_error: the last refresh failure (short text), cleared by a success.
        last_error_at: when that failure happened.
    """

    key: CollateralKey
    fetched_at: dt.datetime | None
    next_update: dt.datetime | None
    refresh_at: dt.datetime | None
    expires: dt.datetime | None
    source_url: str | None
    fresh: bool
    valid: bool
    last_error: str | None
    last_error_at: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (RFC 3339 times)."""

        def iso(value: dt.datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "fmspc": self.key.fmspc,
            "ca": self.key.ca,
            "tcb_update_type": self.key.tcb_update_type,
            "fetched_at": iso(self.fetched_at),
            "next_update": iso(self.next_update),
            "refresh_at": iso(self.refresh_at),
            "expires": iso(self.expires),
            "source_url": self.source_url,
            "fresh": self.fresh,
            "valid": self.valid,
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
        }


class CollateralSource(Protocol):
    """Where the TDX verifier gets collateral."""

    async def get_collateral(self, fmspc: str, ca: CaType, *, at: dt.datetime) -> Collateral:
        """Return collateral for the platform ``fmspc`` / ``ca`` that is valid at ``at``.

        Args:
            fmspc: 12 uppercase hex digits, from the quote's PCK certificate.
            ca: the PCK CA type, from the quote's PCK chain.
            at: the request's instant.

        Raises:
            CollateralUnavailableError: no valid collateral could be obtained.
        """
        ...


class CollateralStore(Protocol):
    """Persistent storage for fetched collateral (shared by replicas, survives restarts)."""

    async def load(self, key: CollateralKey) -> StoredCollateral | None:
        """Return the stored collateral for ``key``, or ``None``.

        Raises:
            Exception: any storage failure; the caching source logs it and carries on.
        """
        ...

    async def save(self, key: CollateralKey, stored: StoredCollateral) -> None:
        """Store (replace) the collateral for ``key``.

        Raises:
            Exception: any storage failure; the caching source logs it and carries on.
        """
        ...
