# SPDX-License-Identifier: Apache-2.0
"""Test material for the Aliyun KMS backend: AAP client keys and a private-CA TLS PKI.

* :func:`make_client_key` builds what the KMS console's "create client key" download holds:
  ``clientKey_<KeyId>.json`` = ``{"KeyId": "KAAP.…", "PrivateKeyData": "<base64 PKCS#12>"}``,
  the PKCS#12 encrypted with the legacy SHA1/3DES algorithms real client keys use, and the
  password that opens it (``clientKey_<KeyId>_Password.txt``, saved with a trailing newline
  as users' files have).
* :func:`make_tls_pki` builds an instance CA (``PrivateKmsCA_<kst>.pem``) and a server
  certificate for the emulator with SANs ``IP:127.0.0.1``, ``DNS:localhost`` and
  ``DNS:<kst>.cryptoservice.kms.aliyuncs.com``.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.hazmat.primitives.serialization.pkcs12 import PBES
from cryptography.x509.oid import NameOID

from kbs.clock import SystemClock

_logger = logging.getLogger(__name__)

__all__ = [
    "ACCESS_KEY_ID",
    "ACCESS_KEY_SECRET",
    "CLIENT_KEY_PASSWORD",
    "DEFAULT_KEY_ID",
    "DEFAULT_KMS_INSTANCE_ID",
    "STS_ACCESS_KEY_ID",
    "STS_ACCESS_KEY_SECRET",
    "STS_TOKEN",
    "ClientKeyMaterial",
    "TlsPki",
    "make_client_key",
    "make_tls_pki",
    "write_client_key_files",
]

DEFAULT_KMS_INSTANCE_ID = "kst-hzz65f1d3b7xyz0abcdef"
DEFAULT_KEY_ID = "KAAP.0b2a1c3d-1111-2222-3333-444455556666"
#: What a console-generated client key password looks like.
CLIENT_KEY_PASSWORD = "fa79c2d4e5b6a7c8"
#: Credentials the emulator accepts (AccessKey pair and an STS triple).
ACCESS_KEY_ID = "LTAI5tEmuAccessKeyId"
ACCESS_KEY_SECRET = "emu-access-key-secret-0123456789"
STS_ACCESS_KEY_ID = "STS.NUemuTemporaryKey"
STS_ACCESS_KEY_SECRET = "emu-sts-secret-abcdefghij"
STS_TOKEN = "CAISemuSecurityTokenValue+/=0123456789"


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class ClientKeyMaterial:
    """An AAP client key as downloaded from the console."""

    key_id: str
    password: str = field(repr=False)
    client_key_json: str = field(repr=False)
    private_key: rsa.RSAPrivateKey = field(repr=False)

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()


def make_client_key(password: str, *, key_id: str = DEFAULT_KEY_ID) -> ClientKeyMaterial:
    """Generate an RSA key, wrap it in a legacy-encrypted PKCS#12 and the client key JSON."""
    key = _rsa_key()
    now = SystemClock().now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(key_id))
        .issuer_name(_name(key_id))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(2048)
        .key_cert_algorithm(PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())
        .build(password.encode())
    )
    p12 = pkcs12.serialize_key_and_certificates(key_id.encode(), key, cert, None, encryption)
    document = {"KeyId": key_id, "PrivateKeyData": base64.b64encode(p12).decode()}
    return ClientKeyMaterial(
        key_id=key_id,
        password=password,
        client_key_json=json.dumps(document, indent=2),
        private_key=key,
    )


def write_client_key_files(
    directory: Path,
    material: ClientKeyMaterial,
    *,
    password_as_json: bool = False,
) -> tuple[Path, Path]:
    """Write ``clientKey_<KeyId>.json`` and the password file; return their paths.

    The password file ends with a newline (as users' files do), or is the guest-components
    ``password_<KeyId>.json`` form ``{"ClientKeyPassword": "…"}`` when ``password_as_json``.
    """
    client_key_path = directory / f"clientKey_{material.key_id}.json"
    client_key_path.write_text(material.client_key_json)
    if password_as_json:
        password_path = directory / f"password_{material.key_id}.json"
        password_path.write_text(json.dumps({"ClientKeyPassword": material.password}) + "\n")
    else:
        password_path = directory / f"clientKey_{material.key_id}_Password.txt"
        password_path.write_text(material.password + "\n")
    return client_key_path, password_path


@dataclass(frozen=True)
class TlsPki:
    """A private CA and the emulator's server certificate (files under ``directory``)."""

    directory: Path
    kms_instance_id: str
    ca_pem: str
    ca_path: Path
    server_cert_path: Path
    server_key_path: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.server_cert_path, self.server_key_path)
        return context


def make_tls_pki(directory: Path, kms_instance_id: str = DEFAULT_KMS_INSTANCE_ID) -> TlsPki:
    """Create ``PrivateKmsCA_<kst>.pem`` and a server certificate signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    now = SystemClock().now()
    ca_key = _rsa_key()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"Private KMS CA {kms_instance_id}"))
        .issuer_name(_name(f"Private KMS CA {kms_instance_id}"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = _rsa_key()
    host = f"{kms_instance_id}.cryptoservice.kms.aliyuncs.com"
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                    x509.DNSName(host),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    ca_path = directory / f"PrivateKmsCA_{kms_instance_id}.pem"
    ca_path.write_text(ca_pem)
    server_cert_path = directory / "server.pem"
    server_cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    server_key_path = directory / "server.key"
    server_key_path.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TlsPki(
        directory=directory,
        kms_instance_id=kms_instance_id,
        ca_pem=ca_pem,
        ca_path=ca_path,
        server_cert_path=server_cert_path,
        server_key_path=server_key_path,
    )
