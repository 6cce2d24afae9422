# SPDX-License-Identifier: Apache-2.0
"""Pure parser for Intel TDX quotes (DCAP ECDSA quote v4 and v5).

No I/O and no cryptography: bytes in, a frozen :class:`Quote` or a
:class:`~attestation.tdx.errors.QuoteParseError` out. Signatures, certificates and
collateral are checked by :mod:`attestation.tdx.dcap`.

Layout (integers little-endian; Intel ``sgx_quote_4.h`` / ``sgx_quote_5.h``)::

    header (48)  version u16, att_key_type u16, tee_type u32, reserved 4, vendor_id 16,
                 user_data 20
    v4 body      TD report 1.0 (584) at 48
    v5 body     body_type u16 at 48, body_size u32 at 50, body at 54:
                 2 = TD report 1.0 (584), 3 = TD report 1.5 (648), 4 = TD 1.5 "ex" (885)
    signature    signature_data_len u32, then: quote signature r||s (64), attestation key
    data         x||y (64), certification data type u16 (= 6), size u32, QE report (384),
                 QE report signature (64), QE auth data size u16 + data, inner
                 certification data type u16 (= 5), size u32, PEM PCK certificate chain

Lengths are checked exactly; bytes after the signature data are tolerated (real quotes
are often zero-padded to a fixed buffer size). Claim names follow the reference
verifier (confidential-containers/trustee ``deps/verifier/src/tdx/claims.rs``).
"""

from __future__ import annotations

import enum
import itertools
import logging
import struct
from dataclasses import dataclass
from typing import Any, Final

from attestation.tdx.errors import QuoteParseError

_logger = logging.getLogger(__name__)

__all__ = [
    "ATT_KEY_TYPE_ECDSA_P256",
    "MAX_PCK_CHAIN_BYTES",
    "MAX_QUOTE_BYTES",
    "TEE_TYPE_TDX",
    "BodyType",
    "Quote",
    "QuoteHeader",
    "SignatureData",
    "TdReport",
    "parse_quote",
    "quote_claims",
    "td_attributes_claims",
]

#: A real quote is about 5 KiB (some stacks pad to 8000 bytes); anything near this is hostile.
MAX_QUOTE_BYTES: Final = 64 * 1024
#: A real PEM chain (leaf, PCK CA, root) is about 3.7 KiB.
MAX_PCK_CHAIN_BYTES: Final = 32 * 1024

HEADER_SIZE: Final = 48
QE_REPORT_SIZE: Final = 384
ATT_KEY_TYPE_ECDSA_P256: Final = 2
TEE_TYPE_TDX: Final = 0x81
TEE_TYPE_SGX: Final = 0x00
CERT_DATA_QE_REPORT: Final = 6
CERT_DATA_PCK_CHAIN: Final = 5
_V5_DESCRIPTOR_SIZE: Final = 6


class BodyType(enum.IntEnum):
    """The TD report layout in a quote (the v5 ``body_type`` values; v4 is always 1.0)."""

    TD_REPORT_10 = 2
    TD_REPORT_15 = 3
    TD_REPORT_15_EX = 4

    @property
    def size(self) -> int:
        """Length of the TD report body in bytes."""
        return _BODY_SIZES[self]


_BODY_SIZES: Final = {
    BodyType.TD_REPORT_10: 584,
    BodyType.TD_REPORT_15: 648,
    BodyType.TD_REPORT_15_EX: 885,
}

# (name, offset, size) of each TD report field, offsets relative to the body start.
_TD10_FIELDS: Final = (
    ("tee_tcb_svn", 0, 16),
    ("mr_seam", 16, 48),
    ("mr_signer_seam", 64, 48),
    ("seam_attributes", 112, 8),
    ("td_attributes", 120, 8),
    ("xfam", 128, 8),
    ("mr_td", 136, 48),
    ("mr_config_id", 184, 48),
    ("mr_owner", 232, 48),
    ("mr_owner_config", 280, 48),
    ("rtmr0", 328, 48),
    ("rtmr1", 376, 48),
    ("rtmr2", 424, 48),
    ("rtmr3", 472, 48),
    ("report_data", 520, 64),
)
_TD15_FIELDS: Final = (
    ("tee_tcb_svn2", 584, 16),
    ("mr_servicetd", 600, 48),
)
# Intel sgx_report2_body_v1_5_ex_t (quote v5 body type 4), names as in Intel's header.
_TD15_EX_FIELDS: Final = (
    ("vmid", 648, 1),
    ("td_id", 649, 32),
    ("devinfo", 681, 48),
    ("init_server_td_hash", 729, 48),
    ("init_server_td_attr", 777, 8),
    ("init_cpu_svn", 785, 16),
    ("init_tee_tcb_svn", 801, 16),
    ("init_tee_fmspc", 817, 12),
    ("curr_server_td_hash", 829, 48),
    ("curr_server_td_attr", 877, 8),
)


@dataclass(frozen=True, slots=True)
class QuoteHeader:
    """The 48-byte quote header, fields as raw bytes where the reference claims use hex."""

    version: int
    att_key_type: int
    tee_type: int
    reserved: bytes
    vendor_id: bytes
    user_data: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class TdReport:
    """A TD report body (1.0, 1.5 or 1.5 "ex"). Fields absent in a layout are ``None``."""

    body_type: BodyType
    raw: bytes
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_servicetd: bytes | None = None
    vmid: bytes | None = None
    td_id: bytes | None = None
    devinfo: bytes | None = None
    init_server_td_hash: bytes | None = None
    init_server_td_attr: bytes | None = None
    init_cpu_svn: bytes | None = None
    init_tee_tcb_svn: bytes | None = None
    init_tee_fmspc: bytes | None = None
    curr_server_td_hash: bytes | None = None
    curr_server_td_attr: bytes | None = None

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        """RTMR0..RTMR3."""
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    @property
    def td_attributes_value(self) -> int:
        """TD_ATTRIBUTES as an integer (little-endian u64)."""
        return int.from_bytes(self.td_attributes, "little")


@dataclass(frozen=True, slots=True)
class SignatureData:
    """The ECDSA signature data with its QE report certification data (type 6 over 5)."""

    signature: bytes
    attestation_key: bytes
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes

    @property
    def qe_isv_svn(self) -> int:
        """ISVSVN of the quoting enclave (selects the QE identity TCB level)."""
        return int(struct.unpack_from("<H", self.qe_report, 258)[0])


@dataclass(frozen=True, slots=True)
class Quote:
    """A parsed TDX quote.

    Attributes:
        header: the quote header.
        body_type: the TD report layout.
        v5_descriptor: the raw 6-byte ``type || size`` descriptor of a v5 quote, else ``None``.
        report: the TD report body.
        signature_data: signature, QE report and PCK chain.
        signed_length: the quote signature covers ``raw[:signed_length]``.
        length: bytes consumed (the input may carry padding after this).
    """

    header: QuoteHeader
    body_type: BodyType
    v5_descriptor: bytes | None
    report: TdReport
    signature_data: SignatureData
    signed_length: int
    length: int

    @property
    def version(self) -> int:
        """Quote format version (4 or 5)."""
        return self.header.version


class _Reader:
    """Bounds-checked little-endian reads; every overrun is a :class:`QuoteParseError`."""

    __slots__ = ("_buf", "_end")

    def __init__(self, buf: bytes, end: int) -> None:
        self._buf = buf
        self._end = end

    def take(self, offset: int, size: int, what: str) -> bytes:
        if size < 0 or offset < 0 or offset + size > self._end:
            raise QuoteParseError(f"tdx quote truncated in {what}")
        return self._buf[offset : offset + size]

    def u16(self, offset: int, what: str) -> int:
        return int.from_bytes(self.take(offset, 2, what), "little")

    def u32(self, offset: int, what: str) -> int:
        return int.from_bytes(self.take(offset, 4, what), "little")


def _parse_header(raw: bytes) -> QuoteHeader:
    if len(raw) < HEADER_SIZE:
        raise QuoteParseError("tdx quote truncated in header")
    version, att_key_type, tee_type = struct.unpack_from("<HHI", raw, 0)
    return QuoteHeader(
        version=version,
        att_key_type=att_key_type,
        tee_type=tee_type,
        reserved=raw[8:12],
        vendor_id=raw[12:28],
        user_data=raw[28:48],
        raw=raw[:HEADER_SIZE],
    )


def _layout(fields: tuple[tuple[str, int, int], ...]) -> struct.Struct:
    # The field tables are contiguous; one Struct slices them all in a single C call.
    assert all(a[1] + a[2] == b[1] for a, b in itertools.pairwise(fields))
    return struct.Struct("<" + "".join(f"{size}s" for _, _, size in fields))


_TD10_STRUCT: Final = _layout(_TD10_FIELDS)
_TD15_STRUCT: Final = _layout(_TD15_FIELDS)
_TD15_EX_STRUCT: Final = _layout(_TD15_EX_FIELDS)


def _parse_report(body: bytes, body_type: BodyType) -> TdReport:
    values = _TD10_STRUCT.unpack_from(body, 0)
    if body_type is BodyType.TD_REPORT_10:
        return TdReport(body_type, body, *values)
    values += _TD15_STRUCT.unpack_from(body, _TD15_FIELDS[0][1])
    if body_type is BodyType.TD_REPORT_15_EX:
        values += _TD15_EX_STRUCT.unpack_from(body, _TD15_EX_FIELDS[0][1])
    return TdReport(body_type, body, *values)


def _parse_signature_data(reader: _Reader, start: int, end: int) -> SignatureData:
    # Fixed part: signature (64), attestation key (64), cert data type (2), size (4).
    signature = reader.take(start, 64, "quote signature")
    attestation_key = reader.take(start + 64, 64, "attestation key")
    cert_type = reader.u16(start + 128, "certification data type")
    if cert_type != CERT_DATA_QE_REPORT:
        raise QuoteParseError(
            f"tdx quote certification data type {cert_type}, expected {CERT_DATA_QE_REPORT}"
        )
    cert_size = reader.u32(start + 130, "certification data size")
    cert_start = start + 134
    if cert_start + cert_size != end:
        raise QuoteParseError("tdx quote certification data size disagrees with signature data")
    inner = _Reader(reader.take(cert_start, cert_size, "certification data"), cert_size)
    qe_report = inner.take(0, QE_REPORT_SIZE, "qe report")
    qe_report_signature = inner.take(QE_REPORT_SIZE, 64, "qe report signature")
    auth_size = inner.u16(QE_REPORT_SIZE + 64, "qe auth data size")
    auth_start = QE_REPORT_SIZE + 66
    qe_auth_data = inner.take(auth_start, auth_size, "qe auth data")
    pos = auth_start + auth_size
    inner_type = inner.u16(pos, "pck certification data type")
    if inner_type != CERT_DATA_PCK_CHAIN:
        raise QuoteParseError(
            f"tdx quote inner certification data type {inner_type}, expected {CERT_DATA_PCK_CHAIN}"
        )
    chain_size = inner.u32(pos + 2, "pck certificate chain size")
    if chain_size > MAX_PCK_CHAIN_BYTES:
        raise QuoteParseError("tdx quote pck certificate chain too large")
    if pos + 6 + chain_size != cert_size:
        raise QuoteParseError("tdx quote pck certificate chain size disagrees with its container")
    pck_chain = inner.take(pos + 6, chain_size, "pck certificate chain")
    return SignatureData(
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=pck_chain,
    )


def parse_quote(raw: bytes) -> Quote:
    """Parse a TDX quote (v4, or v5 with a TD 1.0 / 1.5 / 1.5 "ex" body).

    Args:
        raw: the quote bytes as the guest sent them (trailing padding is allowed).

    Returns:
        The parsed quote. Nothing has been verified yet.

    Raises:
        QuoteParseError: the bytes are not a TDX quote, or are truncated or inconsistent.
    """
    # 1. Size cap before looking inside.
    if len(raw) > MAX_QUOTE_BYTES:
        raise QuoteParseError("tdx quote too large")
    raw = bytes(raw)
    reader = _Reader(raw, len(raw))

    # 2. Header: a TDX quote is version 4 or 5, ECDSA-P256 attestation key, tee_type 0x81.
    header = _parse_header(raw)
    if header.version == 3 and header.tee_type == TEE_TYPE_SGX:  # noqa: PLR2004
        raise QuoteParseError("expected a tdx quote (v4/v5), got an sgx quote (v3)")
    if header.version not in (4, 5):
        raise QuoteParseError(f"unsupported tdx quote version {header.version}")
    if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise QuoteParseError(f"unsupported attestation key type {header.att_key_type}")
    if header.tee_type != TEE_TYPE_TDX:
        raise QuoteParseError(f"quote tee_type {header.tee_type:#x} is not tdx")

    # 3. Body: fixed TD 1.0 for v4; a type/size descriptor for v5.
    descriptor: bytes | None = None
    if header.version == 4:  # noqa: PLR2004
        body_type = BodyType.TD_REPORT_10
        body_start = HEADER_SIZE
    else:
        descriptor = reader.take(HEADER_SIZE, _V5_DESCRIPTOR_SIZE, "v5 body descriptor")
        type_value, body_size = struct.unpack("<HI", descriptor)
        try:
            body_type = BodyType(type_value)
        except ValueError:
            raise QuoteParseError(f"unsupported tdx quote v5 body type {type_value}") from None
        if body_size != body_type.size:
            raise QuoteParseError(
                f"tdx quote v5 body size {body_size}, expected {body_type.size} for type "
                f"{type_value}"
            )
        body_start = HEADER_SIZE + _V5_DESCRIPTOR_SIZE
    body = reader.take(body_start, body_type.size, "td report")
    signed_length = body_start + body_type.size

    # 4. Signature data, exactly as long as it says; padding after it is ignored.
    sig_len = reader.u32(signed_length, "signature data length")
    sig_start = signed_length + 4
    sig_end = sig_start + sig_len
    if sig_end > len(raw):
        raise QuoteParseError("tdx quote truncated in signature data")
    signature_data = _parse_signature_data(reader, sig_start, sig_end)

    return Quote(
        header=header,
        body_type=body_type,
        v5_descriptor=descriptor,
        report=_parse_report(body, body_type),
        signature_data=signature_data,
        signed_length=signed_length,
        length=sig_end,
    )


#: TD_ATTRIBUTES bits the reference verifier reports, by claim name.
_TD_ATTRIBUTE_BITS: Final = (
    ("debug", 0),
    ("septve_disable", 28),
    ("protection_keys", 30),
    ("key_locker", 31),
    ("perfmon", 63),
)


def td_attributes_claims(td_attributes: bytes) -> dict[str, bool]:
    """Return the ``td_attributes`` claim object (named bits of the little-endian u64)."""
    value = int.from_bytes(td_attributes, "little")
    return {name: bool(value >> bit & 1) for name, bit in _TD_ATTRIBUTE_BITS}


def _report_claims(report: TdReport) -> dict[str, str]:
    # Reference names: tcb_svn, mrsigner_seam, rtmr_N (not the Intel/dcap-qvl spellings).
    body = {
        "tcb_svn": report.tee_tcb_svn,
        "mr_seam": report.mr_seam,
        "mrsigner_seam": report.mr_signer_seam,
        "seam_attributes": report.seam_attributes,
        "td_attributes": report.td_attributes,
        "xfam": report.xfam,
        "mr_td": report.mr_td,
        "mr_config_id": report.mr_config_id,
        "mr_owner": report.mr_owner,
        "mr_owner_config": report.mr_owner_config,
        "rtmr_0": report.rtmr0,
        "rtmr_1": report.rtmr1,
        "rtmr_2": report.rtmr2,
        "rtmr_3": report.rtmr3,
        "report_data": report.report_data,
    }
    extra = {name: getattr(report, name) for name, _, _ in _TD15_FIELDS + _TD15_EX_FIELDS}
    body.update({name: value for name, value in extra.items() if value is not None})
    return {name: value.hex() for name, value in body.items()}


def quote_claims(quote: Quote) -> dict[str, Any]:
    """Return the ``quote`` claim object as the reference verifier names it.

    ``quote.header.*`` and ``quote.body.*`` are lowercase hex of the raw fields; v5 quotes
    add ``quote.type`` and ``quote.size`` (hex of the little-endian descriptor fields).
    """
    header = quote.header
    claims: dict[str, Any] = {
        "header": {
            "version": header.raw[0:2].hex(),
            "att_key_type": header.raw[2:4].hex(),
            "tee_type": header.raw[4:8].hex(),
            "reserved": header.reserved.hex(),
            "vendor_id": header.vendor_id.hex(),
            "user_data": header.user_data.hex(),
        },
        "body": _report_claims(quote.report),
    }
    if quote.v5_descriptor is not None:
        claims["type"] = quote.v5_descriptor[0:2].hex()
        claims["size"] = quote.v5_descriptor[2:6].hex()
    return claims
