# SPDX-License-Identifier: Apache-2.0
"""A private DCAP PKI and TDX quote generator that dcap-qvl accepts with a custom root.

Root -> "Intel SGX PCK Platform/Processor CA" -> PCK leaf (with a hand-rolled SGX
extension), root -> TCB signing certificate, CRLs from the root and the PCK CA, signed TCB
Info / QE Identity, and v4/v5 quotes whose QE report is signed by the PCK leaf key and
whose body is signed by a fresh attestation key. Everything is ECDSA P-256 / SHA-256.

Usage::

    pki = TestPki.create()
    parts = pki.collateral_parts(at)  # what a PCCS would serve
    quote = pki.quote(report_data=..., rtmrs=...)
    verify_quote(quote, parts.collateral(), root_ca_der=pki.root_der, at=at, ...)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attestation.errors import CollateralUnavailableError
from attestation.tdx.base import Collateral, CollateralKey

QE_VENDOR_ID = bytes.fromhex("939A7233F79C4CA9940A0DB3957F0607")
QE_MRSIGNER = bytes.fromhex("DC9E2A7C6F948F17474E34A7FC43ED030F7C1563F1BABDDF6340C82E0E54A8C5")
SEPT_VE_DISABLE = 1 << 28
TD_DEBUG = 1
CERT_NOT_BEFORE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
CERT_NOT_AFTER = dt.datetime(2040, 1, 1, tzinfo=dt.UTC)
#: A convenient verification time inside every default validity window.
AT = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

SGX_OID = "1.2.840.113741.1.13.1"


# ------------------------------------------------------------------ tiny DER encoder


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytes([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        rest = arc
        chunk = [rest & 0x7F]
        rest >>= 7
        while rest:
            chunk.insert(0, 0x80 | (rest & 0x7F))
            rest >>= 7
        body += bytes(chunk)
    return _der(0x06, body)


def der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big"))


def der_seq(*items: bytes) -> bytes:
    return _der(0x30, b"".join(items))


def _entry(oid: str, value: bytes) -> bytes:
    return der_seq(der_oid(oid), value)


def sgx_extension(
    *,
    ppid: bytes,
    cpusvn: bytes,
    pcesvn: int,
    pceid: bytes,
    fmspc: bytes,
    sgx_type: int,
    platform: bool,
    flags: tuple[bool, bool, bool],
) -> bytes:
    """DER of the Intel SGX extension (OID 1.2.840.113741.1.13.1) of a PCK leaf."""
    tcb = [_entry(f"{SGX_OID}.2.{i + 1}", der_int(cpusvn[i])) for i in range(16)]
    tcb.append(_entry(f"{SGX_OID}.2.17", der_int(pcesvn)))
    tcb.append(_entry(f"{SGX_OID}.2.18", _der(0x04, cpusvn)))
    items = [
        _entry(f"{SGX_OID}.1", _der(0x04, ppid)),
        _entry(f"{SGX_OID}.2", der_seq(*tcb)),
        _entry(f"{SGX_OID}.3", _der(0x04, pceid)),
        _entry(f"{SGX_OID}.4", _der(0x04, fmspc)),
        _entry(f"{SGX_OID}.5", _der(0x0A, bytes([sgx_type]))),
    ]
    if platform:
        items.append(_entry(f"{SGX_OID}.6", _der(0x04, bytes(range(16)))))
        config = [
            _entry(f"{SGX_OID}.7.{i + 1}", _der(0x01, b"\xff" if flag else b"\x00"))
            for i, flag in enumerate(flags)
        ]
        items.append(_entry(f"{SGX_OID}.7", der_seq(*config)))
    return der_seq(*items)


# ------------------------------------------------------------------ certificates


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Only"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    path_length: int | None = None,
    extra: Sequence[x509.ExtensionType] = (),
    cdp: str | None = None,
) -> x509.Certificate:
    public = key.public_key()
    issuer_name = issuer.subject if issuer is not None else _name(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(CERT_NOT_BEFORE)
        .not_valid_after(CERT_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    else:
        usage = x509.KeyUsage(True, True, False, False, False, False, False, False, False)
    builder = builder.add_extension(usage, critical=True)
    if cdp is not None:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(cdp)], None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    for ext in extra:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _raw_sig(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _crl(
    issuer: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    *,
    this_update: dt.datetime,
    next_update: dt.datetime,
    revoked: Sequence[int] = (),
    number: int = 1,
) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(this_update)
            .build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


# ------------------------------------------------------------------ collateral


def _svns(values: Sequence[int]) -> list[dict[str, int]]:
    return [{"svn": v} for v in values]


@dataclass(frozen=True)
class TcbLevel:
    """One platform TCB level of the test TCB Info."""

    sgx: tuple[int, ...]
    pcesvn: int
    tdx: tuple[int, ...]
    status: str
    date: str = "2025-01-01T00:00:00Z"
    advisories: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        level: dict[str, Any] = {
            "tcb": {
                "sgxtcbcomponents": _svns(self.sgx),
                "pcesvn": self.pcesvn,
                "tdxtcbcomponents": _svns(self.tdx),
            },
            "tcbDate": self.date,
            "tcbStatus": self.status,
        }
        if self.advisories:
            level["advisoryIDs"] = list(self.advisories)
        return level


#: Platform SVNs of the default quote: they match the first default level exactly.
CPUSVN = bytes([2] * 16)
PCESVN = 11
TEE_TCB_SVN = bytes([3, 0, 3] + [0] * 13)
DEFAULT_LEVELS = (
    TcbLevel((2,) * 16, 11, (3, 0, 3) + (0,) * 13, "UpToDate", "2025-06-01T00:00:00Z"),
    TcbLevel(
        (1,) * 16,
        10,
        (0,) * 16,
        "OutOfDate",
        "2024-01-01T00:00:00Z",
        ("INTEL-SA-00960", "INTEL-SA-00982"),
    ),
)


@dataclass(frozen=True)
class CollateralParts:
    """What a PCCS serves for one FMSPC, as bytes and text."""

    fmspc: str
    ca: str
    tcb_info: str
    tcb_info_signature: bytes
    tcb_info_issuer_chain: str
    qe_identity: str
    qe_identity_signature: bytes
    qe_identity_issuer_chain: str
    pck_crl: bytes
    pck_crl_issuer_chain: str
    root_ca_crl: bytes

    def collateral(self, update: str = "standard") -> Collateral:
        key = CollateralKey(self.fmspc, self.ca, update)  # type: ignore[arg-type]
        return Collateral.from_parts(
            key,
            tcb_info=self.tcb_info,
            tcb_info_signature=self.tcb_info_signature,
            tcb_info_issuer_chain=self.tcb_info_issuer_chain,
            qe_identity=self.qe_identity,
            qe_identity_signature=self.qe_identity_signature,
            qe_identity_issuer_chain=self.qe_identity_issuer_chain,
            pck_crl=self.pck_crl,
            pck_crl_issuer_chain=self.pck_crl_issuer_chain,
            root_ca_crl=self.root_ca_crl,
        )

    @property
    def next_update(self) -> dt.datetime:
        return self.collateral().next_update


# ------------------------------------------------------------------ the PKI


@dataclass
class TestPki:
    """Keys and certificates of one private DCAP hierarchy and one platform."""

    __test__ = False  # not a pytest test class

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    pck_ca_key: ec.EllipticCurvePrivateKey
    pck_ca: x509.Certificate
    tcb_key: ec.EllipticCurvePrivateKey
    tcb_cert: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck_leaf: x509.Certificate
    fmspc: str
    ca: str
    levels: tuple[TcbLevel, ...] = DEFAULT_LEVELS
    revoked: tuple[int, ...] = ()
    extra_leaves: dict[str, tuple[ec.EllipticCurvePrivateKey, x509.Certificate]] = field(
        default_factory=dict
    )

    @classmethod
    def create(
        cls,
        *,
        fmspc: str = "00906ED50000",
        ca: str = "platform",
        root_cdp: str | None = None,
        cpusvn: bytes = CPUSVN,
        pcesvn: int = PCESVN,
        flags: tuple[bool, bool, bool] = (True, True, True),
    ) -> TestPki:
        root_key = _key()
        root = _cert(
            "Test SGX Root CA", root_key, None, root_key, ca=True, path_length=1, cdp=root_cdp
        )
        pck_ca_key = _key()
        ca_cn = "Intel SGX PCK Platform CA" if ca == "platform" else "Intel SGX PCK Processor CA"
        pck_ca = _cert(ca_cn, pck_ca_key, root, root_key, ca=True, path_length=0)
        tcb_key = _key()
        tcb_cert = _cert("Intel SGX TCB Signing", tcb_key, root, root_key, ca=False)
        pki = cls(
            root_key, root, pck_ca_key, pck_ca, tcb_key, tcb_cert, tcb_key, tcb_cert, fmspc, ca
        )
        pki.pck_key, pki.pck_leaf = pki.new_leaf(cpusvn=cpusvn, pcesvn=pcesvn, flags=flags)
        return pki

    def new_leaf(
        self,
        *,
        cpusvn: bytes = CPUSVN,
        pcesvn: int = PCESVN,
        flags: tuple[bool, bool, bool] = (True, True, True),
        fmspc: str | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = _key()
        ext = sgx_extension(
            ppid=hashlib.sha256(
                key.public_key().public_bytes(
                    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
                )
            ).digest()[:16],
            cpusvn=cpusvn,
            pcesvn=pcesvn,
            pceid=b"\x00\x00",
            fmspc=bytes.fromhex(fmspc or self.fmspc),
            sgx_type=1 if self.ca == "platform" else 0,
            platform=self.ca == "platform",
            flags=flags,
        )
        leaf = _cert(
            "Intel SGX PCK Certificate",
            key,
            self.pck_ca,
            self.pck_ca_key,
            ca=False,
            extra=[x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_OID), ext)],
        )
        return key, leaf

    @property
    def root_der(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.DER)

    # -------------------------------------------------------------- collateral

    def collateral_parts(
        self,
        at: dt.datetime = AT,
        *,
        validity: dt.timedelta = dt.timedelta(days=30),
        issued_before: dt.timedelta = dt.timedelta(days=1),
        levels: Sequence[TcbLevel] | None = None,
        revoked: Sequence[int] | None = None,
        eval_number: int = 17,
        crl_number: int = 1,
        qe_status: str = "UpToDate",
        fmspc: str | None = None,
    ) -> CollateralParts:
        """Collateral issued ``issued_before`` ``at`` and valid for ``validity``."""
        issue = at - issued_before
        next_update = issue + validity
        fmspc = fmspc or self.fmspc
        tcb_info = {
            "id": "TDX",
            "version": 3,
            "issueDate": _iso(issue),
            "nextUpdate": _iso(next_update),
            "fmspc": fmspc,
            "pceId": "0000",
            "tcbType": 0,
            "tcbEvaluationDataNumber": eval_number,
            "tdxModule": {
                "mrsigner": "00" * 48,
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
            },
            "tcbLevels": [level.as_json() for level in (levels or self.levels)],
        }
        qe_identity = {
            "id": "TD_QE",
            "version": 2,
            "issueDate": _iso(issue),
            "nextUpdate": _iso(next_update),
            "tcbEvaluationDataNumber": eval_number,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": QE_MRSIGNER.hex().upper(),
            "isvprodid": 2,
            "tcbLevels": [
                {"tcb": {"isvsvn": 4}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": qe_status}
            ],
        }
        tcb_text = json.dumps(tcb_info, separators=(",", ":"))
        qe_text = json.dumps(qe_identity, separators=(",", ":"))
        return CollateralParts(
            fmspc=fmspc,
            ca=self.ca,
            tcb_info=tcb_text,
            tcb_info_signature=_raw_sig(self.tcb_key, tcb_text.encode()),
            tcb_info_issuer_chain=_pem(self.tcb_cert, self.root),
            qe_identity=qe_text,
            qe_identity_signature=_raw_sig(self.tcb_key, qe_text.encode()),
            qe_identity_issuer_chain=_pem(self.tcb_cert, self.root),
            pck_crl=_crl(
                self.pck_ca,
                self.pck_ca_key,
                this_update=issue,
                next_update=next_update,
                revoked=self.revoked if revoked is None else revoked,
                number=crl_number,
            ),
            pck_crl_issuer_chain=_pem(self.pck_ca, self.root),
            root_ca_crl=_crl(
                self.root, self.root_key, this_update=issue, next_update=next_update + validity
            ),
        )

    def collateral(self, at: dt.datetime = AT, **kwargs: Any) -> Collateral:
        return self.collateral_parts(at, **kwargs).collateral()

    # -------------------------------------------------------------- quotes

    def quote(
        self,
        *,
        version: int = 4,
        body_type: int = 2,
        report_data: bytes = bytes(64),
        mr_config_id: bytes = bytes(48),
        mr_td: bytes = b"\x42" * 48,
        rtmrs: Sequence[bytes] = (bytes(48),) * 4,
        td_attributes: int = SEPT_VE_DISABLE,
        tee_tcb_svn: bytes = TEE_TCB_SVN,
        tee_tcb_svn2: bytes | None = None,
        qe_isv_svn: int = 4,
        leaf: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None,
        padding: int = 0,
    ) -> bytes:
        """A signed TDX quote (v4, or v5 with body type 2, 3 or 4)."""
        pck_key, pck_leaf = leaf or (self.pck_key, self.pck_leaf)
        header = struct.pack("<HHI", version, 2, 0x81) + bytes(4) + QE_VENDOR_ID + b"\x00" * 20
        body = (
            tee_tcb_svn
            + b"\x5a" * 48  # mr_seam
            + bytes(48)  # mr_signer_seam (Intel module)
            + bytes(8)  # seam_attributes
            + td_attributes.to_bytes(8, "little")
            + bytes.fromhex("e702060000000000")  # xfam
            + mr_td
            + mr_config_id
            + bytes(48)  # mr_owner
            + bytes(48)  # mr_owner_config
            + b"".join(rtmrs)
            + report_data
        )
        if version == 5 and body_type >= 3:
            body += (tee_tcb_svn2 or tee_tcb_svn) + bytes(48)  # tee_tcb_svn2, mr_servicetd
        if version == 5 and body_type == 4:
            body += bytes(885 - 648)
        signed = header + (struct.pack("<HI", body_type, len(body)) if version == 5 else b"") + body
        attest_key = _key()
        attest_pub = attest_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )[1:]
        auth = bytes(range(32))
        qe_report = (
            bytes(16)  # cpusvn
            + bytes(4)  # miscselect
            + bytes(28)
            + bytes.fromhex("11000000000000000000000000000000")  # attributes
            + b"\x77" * 32  # mrenclave
            + bytes(32)
            + QE_MRSIGNER
            + bytes(96)
            + struct.pack("<HH", 2, qe_isv_svn)
            + bytes(60)
            + hashlib.sha256(attest_pub + auth).digest()
            + bytes(32)
        )
        chain = _pem(pck_leaf, self.pck_ca, self.root).encode() + b"\x00"
        cert_data = (
            qe_report
            + _raw_sig(pck_key, qe_report)
            + struct.pack("<H", len(auth))
            + auth
            + struct.pack("<HI", 5, len(chain))
            + chain
        )
        sig_data = (
            _raw_sig(attest_key, signed)
            + attest_pub
            + struct.pack("<HI", 6, len(cert_data))
            + cert_data
        )
        return signed + struct.pack("<I", len(sig_data)) + sig_data + bytes(padding)

    def with_levels(self, levels: Sequence[TcbLevel]) -> TestPki:
        return replace(self, levels=tuple(levels))


class StaticCollateralSource:
    """A CollateralSource serving fixed collateral by FMSPC, whatever the time."""

    def __init__(self, *collaterals: Collateral) -> None:
        self.by_fmspc = {c.key.fmspc: c for c in collaterals}
        self.calls = 0

    async def get_collateral(self, fmspc: str, ca: str, *, at: dt.datetime) -> Collateral:
        del ca, at
        self.calls += 1
        try:
            return self.by_fmspc[fmspc]
        except KeyError:
            raise CollateralUnavailableError(f"no collateral for {fmspc}") from None
