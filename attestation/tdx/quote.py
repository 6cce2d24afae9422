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
from typing import Any, Final, NamedTuple

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


# The parse results are NamedTuples rather than frozen dataclasses: as immutable, and
# built in one C call instead of one object.__setattr__ per field (a TD report has 31
# fields), which was a third of the parser's time; the parser runs on every attestation.


class QuoteHeader(NamedTuple):
    """The 48-byte quote header, fields as raw bytes where the reference claims use hex."""

    version: int
    att_key_type: int
    tee_type: int
    reserved: bytes
    vendor_id: bytes
    user_data: bytes
    raw: bytes


class TdReport(NamedTuple):
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


class SignatureData(NamedTuple):
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


class Quote(NamedTuple):
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


def _truncated(what: str) -> QuoteParseError:
    return QuoteParseError(f"tdx quote truncated in {what}")


_HEADER_STRUCT: Final = struct.Struct("<HHI4s16s20s")
_V5_DESCRIPTOR_STRUCT: Final = struct.Struct("<HI")
# Signature data, fixed part: quote signature, attestation key, cert data type and size.
_SIG_FIXED_STRUCT: Final = struct.Struct("<64s64sHI")
# Certification data type 6, fixed part: QE report, its signature, QE auth data size.
_QE_FIXED_STRUCT: Final = struct.Struct(f"<{QE_REPORT_SIZE}s64sH")
# Inner certification data (type 5) header: type and size.
_INNER_STRUCT: Final = struct.Struct("<HI")


def _parse_header(raw: bytes) -> QuoteHeader:
    if len(raw) < HEADER_SIZE:
        raise _truncated("header")
    version, att_key_type, tee_type, reserved, vendor_id, user_data = _HEADER_STRUCT.unpack_from(
        raw, 0
    )
    return QuoteHeader(
        version=version,
        att_key_type=att_key_type,
        tee_type=tee_type,
        reserved=reserved,
        vendor_id=vendor_id,
        user_data=user_data,
        raw=raw[:HEADER_SIZE],
    )


def _layout(fields: tuple[tuple[str, int, int], ...]) -> struct.Struct:
    # The field tables are contiguous; one Struct slices them all in a single C call.
    assert all(a[1] + a[2] == b[1] for a, b in itertools.pairwise(fields))
    return struct.Struct("<" + "".join(f"{size}s" for _, _, size in fields))


_TD10_STRUCT: Final = _layout(_TD10_FIELDS)
_TD15_STRUCT: Final = _layout(_TD15_FIELDS)
_TD15_EX_STRUCT: Final = _layout(_TD15_EX_FIELDS)


_TD_REPORT_FIELDS: Final = len(TdReport._fields)


def _parse_report(body: bytes, body_type: BodyType) -> TdReport:
    values = (body_type, body, *_TD10_STRUCT.unpack_from(body, 0))
    if body_type is not BodyType.TD_REPORT_10:
        values += _TD15_STRUCT.unpack_from(body, _TD15_FIELDS[0][1])
        if body_type is BodyType.TD_REPORT_15_EX:
            values += _TD15_EX_STRUCT.unpack_from(body, _TD15_EX_FIELDS[0][1])
    # Fields a layout lacks are None (the NamedTuple defaults, spelled out for _make).
    return TdReport._make(values + (None,) * (_TD_REPORT_FIELDS - len(values)))


def _parse_signature_data(raw: bytes, start: int, end: int) -> SignatureData:
    """Parse ``raw[start:end]`` (the caller checked ``end <= len(raw)``)."""
    # Every read below is bounds-checked against ``end``: a short field is a truncation.
    # 1. Fixed part: signature (64), attestation key (64), cert data type (2), size (4).
    if start + _SIG_FIXED_STRUCT.size > end:
        raise _truncated("signature data")
    signature, attestation_key, cert_type, cert_size = _SIG_FIXED_STRUCT.unpack_from(raw, start)
    if cert_type != CERT_DATA_QE_REPORT:
        raise QuoteParseError(
            f"tdx quote certification data type {cert_type}, expected {CERT_DATA_QE_REPORT}"
        )
    cert_start = start + _SIG_FIXED_STRUCT.size
    cert_end = cert_start + cert_size
    if cert_end != end:
        raise QuoteParseError("tdx quote certification data size disagrees with signature data")
    # 2. QE report certification data: QE report, its signature, QE auth data.
    if cert_start + _QE_FIXED_STRUCT.size > cert_end:
        raise _truncated("qe report")
    qe_report, qe_report_signature, auth_size = _QE_FIXED_STRUCT.unpack_from(raw, cert_start)
    auth_start = cert_start + _QE_FIXED_STRUCT.size
    pos = auth_start + auth_size
    if pos > cert_end:
        raise _truncated("qe auth data")
    qe_auth_data = raw[auth_start:pos]
    # 3. Inner certification data: type 5, a PEM PCK chain filling the container exactly.
    if pos + _INNER_STRUCT.size > cert_end:
        raise _truncated("pck certification data")
    inner_type, chain_size = _INNER_STRUCT.unpack_from(raw, pos)
    if inner_type != CERT_DATA_PCK_CHAIN:
        raise QuoteParseError(
            f"tdx quote inner certification data type {inner_type}, expected {CERT_DATA_PCK_CHAIN}"
        )
    if chain_size > MAX_PCK_CHAIN_BYTES:
        raise QuoteParseError("tdx quote pck certificate chain too large")
    chain_start = pos + _INNER_STRUCT.size
    if chain_start + chain_size != cert_end:
        raise QuoteParseError("tdx quote pck certificate chain size disagrees with its container")
    return SignatureData(
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=raw[chain_start:cert_end],
    )


def _check_header(header: QuoteHeader) -> None:
    if header.version == 3 and header.tee_type == TEE_TYPE_SGX:  # noqa: PLR2004
        raise QuoteParseError("expected a tdx quote (v4/v5), got an sgx quote (v3)")
    if header.version not in (4, 5):
        raise QuoteParseError(f"unsupported tdx quote version {header.version}")
    if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise QuoteParseError(f"unsupported attestation key type {header.att_key_type}")
    if header.tee_type != TEE_TYPE_TDX:
        raise QuoteParseError(f"quote tee_type {header.tee_type:#x} is not tdx")


def _locate_body(raw: bytes, version: int) -> tuple[BodyType, int, bytes | None]:
    """(body type, body offset, v5 descriptor or None)."""
    if version == 4:  # noqa: PLR2004
        return BodyType.TD_REPORT_10, HEADER_SIZE, None
    body_start = HEADER_SIZE + _V5_DESCRIPTOR_SIZE
    if body_start > len(raw):
        raise _truncated("v5 body descriptor")
    descriptor = raw[HEADER_SIZE:body_start]
    type_value, body_size = _V5_DESCRIPTOR_STRUCT.unpack(descriptor)
    try:
        body_type = BodyType(type_value)
    except ValueError:
        raise QuoteParseError(f"unsupported tdx quote v5 body type {type_value}") from None
    if body_size != body_type.size:
        raise QuoteParseError(
            f"tdx quote v5 body size {body_size}, expected {body_type.size} for type {type_value}"
        )
    return body_type, body_start, descriptor


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
    size = len(raw)

    # 2. Header: a TDX quote is version 4 or 5, ECDSA-P256 attestation key, tee_type 0x81.
    header = _parse_header(raw)
    _check_header(header)

    # 3. Body: fixed TD 1.0 for v4; a type/size descriptor for v5.
    body_type, body_start, descriptor = _locate_body(raw, header.version)
    signed_length = body_start + body_type.size
    if signed_length > size:
        raise _truncated("td report")
    body = raw[body_start:signed_length]

    # 4. Signature data, exactly as long as it says; padding after it is ignored.
    sig_start = signed_length + 4
    if sig_start > size:
        raise _truncated("signature data length")
    sig_end = sig_start + int.from_bytes(raw[signed_length:sig_start], "little")
    if sig_end > size:
        raise _truncated("signature data")
    signature_data = _parse_signature_data(raw, sig_start, sig_end)

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


# (claim name, offset, size) of every TD report field the reference reports, in its
# order. Reference names: tcb_svn, mrsigner_seam, rtmr_N (not Intel's spellings).
_TD10_CLAIMS: Final = tuple(
    (
        {"tee_tcb_svn": "tcb_svn", "mr_signer_seam": "mrsigner_seam"}.get(
            name, name.replace("rtmr", "rtmr_")
        ),
        offset,
        size,
    )
    for name, offset, size in _TD10_FIELDS
)
_CLAIM_LAYOUTS: Final = {
    BodyType.TD_REPORT_10: _TD10_CLAIMS,
    BodyType.TD_REPORT_15: _TD10_CLAIMS + _TD15_FIELDS,
    BodyType.TD_REPORT_15_EX: _TD10_CLAIMS + _TD15_FIELDS + _TD15_EX_FIELDS,
}


def _report_claims(report: TdReport) -> dict[str, str]:
    # One hex conversion of the whole body, then slices of it (fields are contiguous).
    body = report.raw.hex()
    return {
        name: body[2 * offset : 2 * (offset + size)]
        for name, offset, size in _CLAIM_LAYOUTS[report.body_type]
    }


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
