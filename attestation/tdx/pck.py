# SPDX-License-Identifier: Apache-2.0
"""The PCK certificate chain carried inside a quote: platform facts and a root pre-check.

Pure: PEM bytes in, a frozen :class:`PckChain` out. The Intel SGX extension
(OID 1.2.840.113741.1.13.1) of the leaf gives the FMSPC (which collateral to use), the
CA type (which PCK CRL), and the platform facts the reference reports as claims.

The full chain validation (validity, revocation, the QE report signature) is dcap-qvl's
job. :func:`check_chain_root` only makes sure a quote chains to our trust anchor *before*
we spend a network request on its FMSPC, so forged quotes cannot make us fetch
collateral for made-up platforms.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from dataclasses import dataclass, field
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from attestation.tdx.errors import PckChainError

_logger = logging.getLogger(__name__)

__all__ = [
    "PCK_CHAIN_LENGTH",
    "SGX_EXTENSION_OID",
    "CaType",
    "PckChain",
    "check_chain_root",
    "parse_pck_chain",
]

CaType = Literal["platform", "processor"]

SGX_EXTENSION_OID: Final = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
#: Leaf, PCK Platform/Processor CA, root: what Intel's QVL and the reference require.
PCK_CHAIN_LENGTH: Final = 3
PLATFORM_CA_CN: Final = "Intel SGX PCK Platform CA"
PROCESSOR_CA_CN: Final = "Intel SGX PCK Processor CA"
#: Bound on nested DER elements we walk in the SGX extension (it has about 30).
MAX_EXTENSION_ELEMENTS: Final = 256

_SGX: Final = "1.2.840.113741.1.13.1"
_OID_PPID: Final = _SGX + ".1"
_OID_TCB: Final = _SGX + ".2"
_OID_PCESVN: Final = _SGX + ".2.17"
_OID_CPUSVN: Final = _SGX + ".2.18"
_OID_PCEID: Final = _SGX + ".3"
_OID_FMSPC: Final = _SGX + ".4"
_OID_SGX_TYPE: Final = _SGX + ".5"
_OID_PLATFORM_INSTANCE_ID: Final = _SGX + ".6"
_OID_CONFIGURATION: Final = _SGX + ".7"
_OID_DYNAMIC_PLATFORM: Final = _SGX + ".7.1"
_OID_CACHED_KEYS: Final = _SGX + ".7.2"
_OID_SMT_ENABLED: Final = _SGX + ".7.3"

_TAG_BOOLEAN: Final = 0x01
_TAG_INTEGER: Final = 0x02
_TAG_OCTET_STRING: Final = 0x04
_TAG_OID: Final = 0x06
_TAG_ENUMERATED: Final = 0x0A
_TAG_SEQUENCE: Final = 0x30
_HIGH_TAG_FORM: Final = 0x1F


@dataclass(frozen=True, slots=True)
class PckChain:
    """Facts from a quote's PCK chain (no signature has been checked by parsing).

    Attributes:
        digest: SHA-256 of the PEM bytes as carried in the quote (a cache key).
        certificates: DER of leaf, PCK CA and root, in that order.
        ca: ``platform`` or ``processor``, from the PCK CA's common name.
        fmspc: the FMSPC, 12 uppercase hex digits.
        ppid: the PPID (16 bytes); the reference calls its hex ``platform_provider_id``.
        cpusvn: CPUSVN (16 bytes).
        pcesvn: PCESVN.
        pceid: PCE-ID (2 bytes).
        sgx_type: 0 Standard, 1 Scalable, 2 Scalable with Integrity.
        platform_instance_id: Platform-CA certificates only; byte order as the reference
            reports it (the little-endian GUID read as a big-endian integer).
        dynamic_platform: Platform-CA certificates only.
        cached_keys: Platform-CA certificates only.
        smt_enabled: Platform-CA certificates only.
    """

    digest: bytes
    certificates: tuple[bytes, ...] = field(repr=False)
    ca: CaType
    fmspc: str
    ppid: bytes
    cpusvn: bytes
    pcesvn: int
    pceid: bytes
    sgx_type: int
    platform_instance_id: bytes | None
    dynamic_platform: bool | None
    cached_keys: bool | None
    smt_enabled: bool | None


class _Der:
    """A tiny DER walker: enough for the SGX extension, strict about lengths."""

    __slots__ = ("_budget",)

    def __init__(self) -> None:
        self._budget = MAX_EXTENSION_ELEMENTS

    def elements(self, data: bytes) -> list[tuple[int, bytes]]:
        """Split ``data`` into its (tag, content) elements; all of it must be consumed."""
        out: list[tuple[int, bytes]] = []
        pos = 0
        while pos < len(data):
            self._budget -= 1
            if self._budget < 0:
                raise PckChainError("sgx extension has too many elements")
            if pos + 2 > len(data):
                raise PckChainError("sgx extension truncated")
            tag = data[pos]
            if tag & _HIGH_TAG_FORM == _HIGH_TAG_FORM:
                raise PckChainError("sgx extension uses high tag numbers")
            length = data[pos + 1]
            pos += 2
            if length & 0x80:
                count = length & 0x7F
                if count == 0 or count > 4 or pos + count > len(data):  # noqa: PLR2004
                    raise PckChainError("sgx extension has a bad length")
                length = int.from_bytes(data[pos : pos + count], "big")
                pos += count
            if pos + length > len(data):
                raise PckChainError("sgx extension truncated")
            out.append((tag, data[pos : pos + length]))
            pos += length
        return out


def _oid_text(content: bytes) -> str:
    if not content:
        raise PckChainError("sgx extension has an empty oid")
    arcs = [*divmod(content[0], 40)] if content[0] < 80 else [2, content[0] - 80]  # noqa: PLR2004
    value = 0
    for i, byte in enumerate(content[1:], start=1):
        value = value << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(value)
            value = 0
        elif i == len(content) - 1:
            raise PckChainError("sgx extension has a truncated oid")
    return ".".join(str(arc) for arc in arcs)


def _collect(der: _Der, content: bytes, out: dict[str, tuple[int, bytes]]) -> None:
    """Flatten ``SEQUENCE { SEQUENCE { OID, value } ... }`` into ``out`` (recursively)."""
    for tag, item in der.elements(content):
        if tag != _TAG_SEQUENCE:
            raise PckChainError("sgx extension entry is not a sequence")
        parts = der.elements(item)
        if len(parts) != 2 or parts[0][0] != _TAG_OID:  # noqa: PLR2004
            raise PckChainError("sgx extension entry is not (oid, value)")
        oid = _oid_text(parts[0][1])
        if oid in out:
            raise PckChainError(f"sgx extension repeats {oid}")
        out[oid] = parts[1]
        if parts[1][0] == _TAG_SEQUENCE:
            _collect(der, parts[1][1], out)


def _value(values: dict[str, tuple[int, bytes]], oid: str, tag: int, size: int | None) -> bytes:
    try:
        got_tag, content = values[oid]
    except KeyError:
        raise PckChainError(f"sgx extension lacks {oid}") from None
    if got_tag != tag or (size is not None and len(content) != size):
        raise PckChainError(f"sgx extension has a malformed {oid}")
    return content


def _optional_bool(values: dict[str, tuple[int, bytes]], oid: str) -> bool | None:
    if oid not in values:
        return None
    return _value(values, oid, _TAG_BOOLEAN, 1) != b"\x00"


def _small_int(content: bytes, oid: str) -> int:
    if not content or len(content) > 3:  # noqa: PLR2004
        raise PckChainError(f"sgx extension has a malformed {oid}")
    value = int.from_bytes(content, "big", signed=True)
    if value < 0:
        raise PckChainError(f"sgx extension has a negative {oid}")
    return value


def _common_name(name: x509.Name) -> str:
    attributes = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attributes) != 1:
        raise PckChainError("pck certificate has no single common name")
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def parse_pck_chain(pem: bytes) -> PckChain:
    """Parse the PEM PCK chain of a quote and the SGX extension of its leaf.

    Args:
        pem: the chain as carried in the quote (trailing NULs are ignored).

    Returns:
        The platform facts. No signature, validity period or revocation is checked.

    Raises:
        PckChainError: not exactly three certificates, an unknown PCK CA, or a missing or
            malformed SGX extension.
    """
    digest = hashlib.sha256(pem).digest()
    try:
        certs = x509.load_pem_x509_certificates(pem.rstrip(b"\x00"))
    except ValueError as exc:
        raise PckChainError("pck certificate chain is not pem") from exc
    # 1. Shape: leaf, PCK CA, root (as Intel's QVL and the reference require).
    if len(certs) != PCK_CHAIN_LENGTH:
        raise PckChainError(f"pck chain has {len(certs)} certificates, expected 3")
    leaf, ca_cert, _ = certs

    # 2. CA type from the intermediate's common name.
    ca_cn = _common_name(ca_cert.subject)
    if ca_cn == PLATFORM_CA_CN:
        ca: CaType = "platform"
    elif ca_cn == PROCESSOR_CA_CN:
        ca = "processor"
    else:
        raise PckChainError("pck chain intermediate is not an intel pck platform/processor ca")

    # 3. The SGX extension of the leaf.
    try:
        ext = leaf.extensions.get_extension_for_oid(SGX_EXTENSION_OID)
    except x509.ExtensionNotFound:
        raise PckChainError("pck leaf certificate has no sgx extension") from None
    except ValueError as exc:  # duplicate or malformed extensions
        raise PckChainError("pck leaf certificate extensions are malformed") from exc
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    der = _Der()
    top = der.elements(ext.value.value)
    if len(top) != 1 or top[0][0] != _TAG_SEQUENCE:
        raise PckChainError("sgx extension is not one sequence")
    values: dict[str, tuple[int, bytes]] = {}
    _collect(der, top[0][1], values)

    sgx_type_raw = _value(values, _OID_SGX_TYPE, _TAG_ENUMERATED, None)
    platform_instance_id: bytes | None = None
    if ca == "platform":
        # Platform-CA certificates carry the instance id and the configuration flags.
        raw_id = _value(values, _OID_PLATFORM_INSTANCE_ID, _TAG_OCTET_STRING, 16)
        _value(values, _OID_CONFIGURATION, _TAG_SEQUENCE, None)
        # The reference reads the GUID as a little-endian u128 and prints it big-endian.
        platform_instance_id = raw_id[::-1]
    return PckChain(
        digest=digest,
        certificates=tuple(c.public_bytes(serialization.Encoding.DER) for c in certs),
        ca=ca,
        fmspc=_value(values, _OID_FMSPC, _TAG_OCTET_STRING, 6).hex().upper(),
        ppid=_value(values, _OID_PPID, _TAG_OCTET_STRING, 16),
        cpusvn=_value(values, _OID_CPUSVN, _TAG_OCTET_STRING, 16),
        pcesvn=_small_int(_value(values, _OID_PCESVN, _TAG_INTEGER, None), _OID_PCESVN),
        pceid=_value(values, _OID_PCEID, _TAG_OCTET_STRING, 2),
        sgx_type=_small_int(sgx_type_raw, _OID_SGX_TYPE),
        platform_instance_id=platform_instance_id,
        dynamic_platform=_optional_bool(values, _OID_DYNAMIC_PLATFORM),
        cached_keys=_optional_bool(values, _OID_CACHED_KEYS),
        smt_enabled=_optional_bool(values, _OID_SMT_ENABLED),
    )


def check_chain_root(chain: PckChain, root_ca_der: bytes) -> None:
    """Check that ``chain`` ends in ``root_ca_der`` and each certificate signs the next.

    Signatures only: validity periods and revocation are judged by dcap-qvl at ``at``.

    Raises:
        PckChainError: the chain does not lead to the trusted root.
    """
    # 1. The root in the quote must be our trust anchor, byte for byte.
    if chain.certificates[-1] != root_ca_der:
        raise PckChainError("pck chain does not end in the trusted root ca")
    # 2. Leaf <- PCK CA <- root, each directly issued by the next.
    certs = [x509.load_der_x509_certificate(der) for der in chain.certificates]
    try:
        for child, issuer in itertools.pairwise(certs):
            child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PckChainError("pck chain signature does not verify") from exc
