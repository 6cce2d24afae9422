# SPDX-License-Identifier: Apache-2.0
"""The guest's TEE key pair: exported as the ``tee-pubkey`` JWK, used to open JWE responses.

This is our kbs-client's key and, in tests, "the guest". It behaves like the reference
guest (guest-components ``kbs_protocol::TeeKeyPair``), including its quirks:

* The public JWK has kbs-types' member order (``kty`` tag first, then the variant's
  fields): EC ``kty, crv, alg, x, y``; RSA ``kty, alg, n, e``.
* To compute the AES-GCM AAD, the received ``protected`` string is **not** used as is. The
  header is parsed into ``{alg, enc, other fields}`` and serialized again the kbs-types
  way (``alg``, ``enc``, then the other members with sorted keys, compact), then
  base64url-encoded. A server whose header bytes differ from that form fails here.
* The key-management ``alg`` comes from the header; an RSA key opens both ``RSA1_5`` and
  ``RSA-OAEP-256``. ``enc`` is not checked: the content is always AES-256-GCM.

Nothing here is shared with the server's ``kbs.jwe``: the re-serialization, Concat KDF and
unwrap are written separately on purpose, so that round-trip tests compare two
implementations rather than one with itself (jwcrypto is the third, in the tests).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import struct
from collections.abc import Mapping
from typing import Any, Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_logger = logging.getLogger(__name__)

__all__ = ["TeeKeyError", "TeeKeyKind", "TeeKeyPair", "reserialize_protected_header"]

#: What :meth:`TeeKeyPair.generate` can make. ``ec-p256`` is the reference default;
#: ``rsa1_5`` is what guests of protocol 0.1.x advertised.
TeeKeyKind = Literal["ec-p256", "ec-p521", "rsa-oaep-256", "rsa1_5"]

_ECDH_ES_A256KW: Final = "ECDH-ES+A256KW"
_RSA_OAEP_256: Final = "RSA-OAEP-256"
_RSA1_5: Final = "RSA1_5"
#: Reference ``RSA_PUBKEY_LENGTH``.
_RSA_BITS: Final = 2048
_RSA_PUBLIC_EXPONENT: Final = 65537
_CEK_BYTES: Final = 32
_IV_BYTES: Final = 12
_TAG_BYTES: Final = 16

#: kind -> (JWK crv, curve, coordinate bytes) for the EC kinds.
_EC_KINDS: Final[Mapping[TeeKeyKind, tuple[str, ec.EllipticCurve, int]]] = {
    "ec-p256": ("P-256", ec.SECP256R1(), 32),
    "ec-p521": ("P-521", ec.SECP521R1(), 66),
}
_RSA_KINDS: Final[Mapping[TeeKeyKind, str]] = {"rsa-oaep-256": _RSA_OAEP_256, "rsa1_5": _RSA1_5}

_B64URL_NOPAD: Final = re.compile(r"[A-Za-z0-9_-]*")
_RESPONSE_FIELDS: Final = ("protected", "encrypted_key", "iv", "ciphertext", "tag")


class TeeKeyError(Exception):
    """A key could not be created or loaded, or a response could not be decrypted.

    Messages name the failed step and never contain key material or plaintext.
    """


class TeeKeyPair:
    """An ephemeral TEE key pair and the JWE algorithm it advertises."""

    __slots__ = ("_kind", "_private_key")

    def __init__(
        self,
        private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
        *,
        kind: TeeKeyKind,
    ) -> None:
        """Wrap an existing private key.

        Args:
            private_key: An RSA key, or an EC key on the curve ``kind`` names.
            kind: What the key advertises in its JWK.

        Raises:
            TeeKeyError: ``kind`` does not fit the key.
        """
        if kind in _EC_KINDS:
            _, curve, _ = _EC_KINDS[kind]
            if not isinstance(private_key, ec.EllipticCurvePrivateKey):
                raise TeeKeyError(f"{kind} needs an ec key")
            if private_key.curve.name != curve.name:
                raise TeeKeyError(f"{kind} needs a key on {curve.name}")
        elif kind in _RSA_KINDS:
            if not isinstance(private_key, rsa.RSAPrivateKey):
                raise TeeKeyError(f"{kind} needs an rsa key")
        else:
            raise TeeKeyError("unknown key kind")
        self._private_key = private_key
        self._kind: TeeKeyKind = kind

    def __repr__(self) -> str:
        """Name the kind only; never the key."""
        return f"TeeKeyPair(kind={self._kind!r})"

    @classmethod
    def generate(cls, kind: TeeKeyKind = "ec-p256") -> TeeKeyPair:
        """Generate a fresh key pair (RSA keys are 2048-bit, as in the reference).

        Args:
            kind: ``ec-p256`` (default, as in the reference), ``ec-p521``,
                ``rsa-oaep-256`` or ``rsa1_5``.

        Returns:
            The new key pair. Randomness comes from cryptography's CSPRNG.

        Raises:
            TeeKeyError: ``kind`` is unknown.
        """
        if kind in _EC_KINDS:
            _, curve, _ = _EC_KINDS[kind]
            return cls(ec.generate_private_key(curve), kind=kind)
        if kind in _RSA_KINDS:
            key = rsa.generate_private_key(public_exponent=_RSA_PUBLIC_EXPONENT, key_size=_RSA_BITS)
            return cls(key, kind=kind)
        raise TeeKeyError("unknown key kind")

    @property
    def kind(self) -> TeeKeyKind:
        """The kind this key pair was created as."""
        return self._kind

    def public_jwk(self) -> dict[str, str]:
        """Export the public key as the reference guest does (kbs-types ``TeePubKey``).

        Returns:
            EC: ``{"kty","crv","alg","x","y"}``; RSA: ``{"kty","alg","n","e"}``, in that
            order, values base64url without padding (EC coordinates fixed-length, RSA
            integers minimal big-endian).
        """
        key = self._private_key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            crv, _, size = _EC_KINDS[self._kind]
            point = key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            return {
                "kty": "EC",
                "crv": crv,
                "alg": _ECDH_ES_A256KW,
                "x": _b64url(point[1 : 1 + size]),
                "y": _b64url(point[1 + size :]),
            }
        numbers = key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "alg": _RSA_KINDS[self._kind],
            "n": _b64url(_minimal_bytes(numbers.n)),
            "e": _b64url(_minimal_bytes(numbers.e)),
        }

    def decrypt(self, response: Mapping[str, Any]) -> bytes:
        """Decrypt a flattened JSON JWE response (protocol >= 0.2), as the reference does.

        Steps:
          1. Decode the five members (base64url, no padding); ``protected`` must be a JSON
             object with string ``alg`` and ``enc``.
          2. Unwrap the CEK according to the header's ``alg``.
          3. AAD = base64url of the header re-serialized the kbs-types way.
          4. AES-256-GCM decrypt ``ciphertext`` with ``iv`` and ``tag``.

        Args:
            response: The decoded JSON response body.

        Returns:
            The plaintext.

        Raises:
            TeeKeyError: Any step fails (malformed response, wrong key, tampering).
        """
        # 1. Decode.
        if not isinstance(response, Mapping):
            raise TeeKeyError("response is not a json object")
        fields = {name: _b64url_decode(response.get(name), what=name) for name in _RESPONSE_FIELDS}
        if "aad" in response and not isinstance(response["aad"], str):
            raise TeeKeyError("response member 'aad' is not a string")
        header = _parse_header(fields["protected"])

        # 2. Unwrap the CEK.
        cek = self._unwrap_cek(header, fields["encrypted_key"])

        # 3. The AAD the reference computes (it ignores any `aad` member of the response).
        aad = reserialize_protected_header(header).encode("ascii")

        # 4. Content decryption.
        return _gcm_open(cek, fields["iv"], fields["ciphertext"] + fields["tag"], aad)

    def decrypt_legacy(self, response: Mapping[str, Any]) -> bytes:
        """Decrypt a protocol 0.1.x response, as guest-components up to v0.11 did.

        ``protected`` is raw JSON text (``alg`` must be ``RSA1_5``, ``enc`` ``A256GCM``);
        ``encrypted_key``, ``iv`` and ``ciphertext`` are base64url without padding, the
        GCM tag is the last 16 bytes of ``ciphertext``, there is no AAD and ``tag`` is
        ignored.

        Args:
            response: The decoded JSON response body.

        Returns:
            The plaintext.

        Raises:
            TeeKeyError: The response is malformed, not RSA1_5/A256GCM, or does not open.
        """
        if not isinstance(response, Mapping):
            raise TeeKeyError("response is not a json object")
        protected = response.get("protected")
        if not isinstance(protected, str):
            raise TeeKeyError("response member 'protected' is missing or not a string")
        header = _parse_header(protected.encode())
        if header["alg"] != _RSA1_5 or header["enc"] != "A256GCM":
            raise TeeKeyError("legacy response is not RSA1_5 with A256GCM")
        encrypted_key = _b64url_decode(response.get("encrypted_key"), what="encrypted_key")
        iv = _b64url_decode(response.get("iv"), what="iv")
        sealed = _b64url_decode(response.get("ciphertext"), what="ciphertext")
        cek = self._rsa_decrypt(encrypted_key, padding.PKCS1v15())
        return _gcm_open(cek, iv, sealed, None)

    def to_pem(self) -> bytes:
        """Serialize the private key as the reference does, unencrypted.

        Returns:
            RSA: PKCS#1 (``RSA PRIVATE KEY``); EC: PKCS#8 (``PRIVATE KEY``).
        """
        fmt = (
            serialization.PrivateFormat.TraditionalOpenSSL
            if isinstance(self._private_key, rsa.RSAPrivateKey)
            else serialization.PrivateFormat.PKCS8
        )
        return self._private_key.private_bytes(
            serialization.Encoding.PEM, fmt, serialization.NoEncryption()
        )

    @classmethod
    def from_pem(
        cls,
        pem: bytes | str,
        *,
        rsa_kind: Literal["rsa-oaep-256", "rsa1_5"] = "rsa-oaep-256",
    ) -> TeeKeyPair:
        """Load a key written by :meth:`to_pem` (or by the reference guest).

        Args:
            pem: An unencrypted PEM private key: RSA, or EC on P-256/P-521.
            rsa_kind: What an RSA key advertises; PEM cannot say. The reference always
                advertises ``RSA-OAEP-256`` for a loaded RSA key.

        Returns:
            The key pair.

        Raises:
            TeeKeyError: The PEM does not hold a supported private key.
        """
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise TeeKeyError("pem does not hold an unencrypted private key") from exc
        if isinstance(key, rsa.RSAPrivateKey):
            return cls(key, kind=rsa_kind)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            for kind, (_, curve, _) in _EC_KINDS.items():
                if key.curve.name == curve.name:
                    return cls(key, kind=kind)
            raise TeeKeyError("ec key is not on P-256 or P-521")
        raise TeeKeyError("pem holds neither an rsa nor an ec key")

    # ------------------------------------------------------------ internals

    def _unwrap_cek(self, header: Mapping[str, Any], encrypted_key: bytes) -> bytes:
        alg = header["alg"]
        if alg == _RSA1_5:
            _logger.warning("response uses deprecated RSA1_5")
            return self._rsa_decrypt(encrypted_key, padding.PKCS1v15())
        if alg == _RSA_OAEP_256:
            oaep = padding.OAEP(
                mgf=padding.MGF1(algorithm=hashes.SHA256()),
                algorithm=hashes.SHA256(),
                label=None,
            )
            return self._rsa_decrypt(encrypted_key, oaep)
        if alg == _ECDH_ES_A256KW:
            return self._ecdh_unwrap(header, encrypted_key)
        raise TeeKeyError("unsupported key-management alg")

    def _rsa_decrypt(self, encrypted_key: bytes, pad: padding.AsymmetricPadding) -> bytes:
        key = self._private_key
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TeeKeyError("rsa alg but this is not an rsa key")
        try:
            return key.decrypt(encrypted_key, pad)
        except ValueError as exc:
            raise TeeKeyError("rsa decryption of the cek failed") from exc

    def _ecdh_unwrap(self, header: Mapping[str, Any], encrypted_key: bytes) -> bytes:
        # The reference reads epk.crv/x/y only (not epk.kty).
        epk = header.get("epk")
        if not isinstance(epk, Mapping):
            raise TeeKeyError("protected header has no 'epk' object")
        crv, x_text, y_text = (epk.get(name) for name in ("crv", "x", "y"))
        if not isinstance(crv, str):
            raise TeeKeyError("epk has no string 'crv'")
        x = _b64url_decode(x_text, what="epk.x")
        y = _b64url_decode(y_text, what="epk.y")
        key = self._private_key
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TeeKeyError("ecdh alg but this is not an ec key")
        own_crv, curve, size = _EC_KINDS[self._kind]
        if crv != own_crv:
            raise TeeKeyError("epk curve does not match the key")
        if len(x) != size or len(y) != size:
            raise TeeKeyError("epk coordinate has the wrong length")
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y)
        except ValueError as exc:
            raise TeeKeyError("epk is not a point on the curve") from exc
        z = key.exchange(ec.ECDH(), peer)
        kek = _concat_kdf_sha256(z, _ECDH_ES_A256KW, _CEK_BYTES)
        try:
            return keywrap.aes_key_unwrap(kek, encrypted_key)
        except (keywrap.InvalidUnwrap, ValueError) as exc:
            raise TeeKeyError("aes key unwrap failed") from exc


def reserialize_protected_header(header: Mapping[str, Any]) -> str:
    """Serialize a parsed protected header as kbs-types ``ProtectedHeader`` does, base64url.

    ``alg`` and ``enc`` first, then every other member in sorted key order, nested objects
    with sorted keys too (serde_json's default ``BTreeMap``), compact, non-ASCII raw. This
    is the reference client's ``generate_aad``. Known limit: JSON numbers other than
    integers are not guaranteed to come out as serde_json writes them; our server sends
    none.

    Args:
        header: The parsed header; ``alg`` and ``enc`` must be strings.

    Returns:
        base64url (no padding) of the serialized header.

    Raises:
        TeeKeyError: ``alg`` or ``enc`` is missing or not a string.
    """
    alg, enc = header.get("alg"), header.get("enc")
    if not isinstance(alg, str) or not isinstance(enc, str):
        raise TeeKeyError("protected header needs string 'alg' and 'enc'")
    ordered: dict[str, Any] = {"alg": alg, "enc": enc}
    for name in sorted(k for k in header if k not in ("alg", "enc")):
        ordered[name] = _sorted_value(header[name])
    text = json.dumps(ordered, ensure_ascii=False, separators=(",", ":"))
    return _b64url(text.encode("utf-8"))


def _sorted_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _sorted_value(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_value(item) for item in value]
    return value


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise TeeKeyError("protected header is not json") from exc
    if not isinstance(header, dict):
        raise TeeKeyError("protected header is not a json object")
    if not isinstance(header.get("alg"), str) or not isinstance(header.get("enc"), str):
        raise TeeKeyError("protected header needs string 'alg' and 'enc'")
    return header


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate member")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    # serde_json rejects NaN/Infinity; so do we.
    raise ValueError(f"{name} is not json")


def _gcm_open(cek: bytes, iv: bytes, sealed: bytes, aad: bytes | None) -> bytes:
    if len(cek) != _CEK_BYTES:
        raise TeeKeyError("cek is not 32 bytes")
    if len(iv) != _IV_BYTES:
        raise TeeKeyError("iv is not 12 bytes")
    if len(sealed) < _TAG_BYTES:
        raise TeeKeyError("ciphertext and tag are too short")
    try:
        return AESGCM(cek).decrypt(iv, sealed, aad)
    except InvalidTag as exc:
        raise TeeKeyError("aes-gcm authentication failed") from exc


def _concat_kdf_sha256(z: bytes, algorithm_id: str, length: int) -> bytes:
    """RFC 7518 §4.6.2 Concat KDF, SHA-256, empty apu/apv (written out, not a library)."""
    algorithm = algorithm_id.encode("ascii")
    other_info = (
        struct.pack(">I", len(algorithm))
        + algorithm
        + struct.pack(">I", 0)  # PartyUInfo: empty
        + struct.pack(">I", 0)  # PartyVInfo: empty
        + struct.pack(">I", length * 8)  # SuppPubInfo: keydatalen in bits
    )
    output = b""
    counter = 1
    while len(output) < length:
        output += hashlib.sha256(struct.pack(">I", counter) + z + other_info).digest()
        counter += 1
    return output[:length]


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_decode(value: object, *, what: str) -> bytes:
    """Strict base64url without padding, like the reference's ``URL_SAFE_NO_PAD``."""
    if not isinstance(value, str):
        raise TeeKeyError(f"'{what}' is missing or not a string")
    if len(value) % 4 == 1 or _B64URL_NOPAD.fullmatch(value) is None:
        raise TeeKeyError(f"'{what}' is not base64url without padding")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except binascii.Error as exc:  # pragma: no cover - excluded by the checks above
        raise TeeKeyError(f"'{what}' is not base64url") from exc
    if _b64url(raw) != value:
        raise TeeKeyError(f"'{what}' is not canonical base64url")
    return raw


def _minimal_bytes(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
