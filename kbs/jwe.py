# SPDX-License-Identifier: Apache-2.0
"""JWE (RFC 7516 flattened JSON) wrapping of released secrets for the guest's TEE key.

No proof of possession happens here: the guest sent a public key (the ``tee-pubkey`` JWK,
bound into its evidence) and we encrypt the resource to that key. The reference guest
(guest-components ``kbs_protocol``) must decrypt our output unchanged, so the bytes follow
the reference exactly:

* Flattened JSON ``{"protected","encrypted_key","iv","ciphertext","tag"}``, every value
  base64url without padding, ``enc`` always ``A256GCM``, a fresh 32-byte CEK and 12-byte IV.
* ``alg`` comes from the key: ``RSA1_5`` (deprecated, kept for old guests), ``RSA-OAEP-256``
  (OAEP with SHA-256 and MGF1-SHA-256) or ``ECDH-ES+A256KW`` on P-256 or P-521 (Concat KDF
  with SHA-256, empty PartyUInfo/PartyVInfo, then AES-256 key wrap of the CEK).
* The AAD is the ASCII of ``protected``. The reference client does **not** use the string it
  received: it parses the header into kbs-types ``ProtectedHeader {alg, enc, flattened
  other fields}`` and serializes it again (serde_json: ``alg``, ``enc``, then the remaining
  members with sorted keys, compact). Our header bytes are therefore exactly that
  serialization, e.g. ``{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-256",
  "kty":"EC","x":"…","y":"…"}}`` with fixed-length coordinates.

Protocol 0.1.x sessions get :func:`wrap_legacy` instead (see its docstring).

Why not jwcrypto or joserfc: a library has to emit exactly the header bytes above, and it
does not. jwcrypto (checked with 1.6) puts the ECDH-ES ``epk`` into the unprotected
per-recipient ``header`` member, which kbs-types ``Response`` does not even have, so the
reference guest would find no ``epk``; it also draws the CEK and IV itself (no injectable
entropy) and cannot produce the legacy shape at all. joserfc is not a dependency, and
pulling in a JOSE framework to control four base64 fields and one JSON string would hide
the very bytes that must be audited. So this module composes ``cryptography`` primitives
(OAEP/PKCS#1 v1.5, ECDH, ConcatKDFHash, AES key wrap, AES-GCM) and writes the JSON itself;
jwcrypto is used in the tests as an independent decrypter.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import pybase64
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash

from kbs import jsoncodec
from kbs.entropy import Entropy

_logger = logging.getLogger(__name__)

__all__ = [
    "ALG_ECDH_ES_A256KW",
    "ALG_RSA1_5",
    "ALG_RSA_OAEP_256",
    "ENC_A256GCM",
    "RSA_MAX_MODULUS_BITS",
    "RSA_MIN_MODULUS_BITS",
    "JweError",
    "KeyAlgorithm",
    "TeePublicKey",
    "concat_kdf",
    "parse_tee_pubkey",
    "serialize_protected_header",
    "wrap",
    "wrap_legacy",
]

#: RSAES-PKCS1-v1_5 key transport. Deprecated (Bleichenbacher); kept because the reference
#: still accepts it and 0.1.x guests know nothing else.
ALG_RSA1_5: Final = "RSA1_5"
#: RSAES-OAEP with SHA-256 and MGF1-SHA-256 (RFC 7518 §4.3).
ALG_RSA_OAEP_256: Final = "RSA-OAEP-256"
#: ECDH-ES with Concat KDF, CEK wrapped with A256KW (RFC 7518 §4.6).
ALG_ECDH_ES_A256KW: Final = "ECDH-ES+A256KW"
#: The only content encryption the reference client implements.
ENC_A256GCM: Final = "A256GCM"

KeyAlgorithm = Literal["RSA1_5", "RSA-OAEP-256", "ECDH-ES+A256KW"]

#: Deliberate difference from the reference, which accepts any modulus the Rust ``rsa``
#: crate accepts (no lower bound). Moduli under 2048 bits are below current guidance
#: (NIST SP 800-131A) for protecting secrets; the reference guest's RSA keys are 2048-bit,
#: so no real guest is turned away.
RSA_MIN_MODULUS_BITS: Final = 2048
#: The reference's bound (``rsa`` 0.9 ``RsaPublicKey::new`` rejects larger moduli); also
#: caps the work a guest can make us do per request.
RSA_MAX_MODULUS_BITS: Final = 4096
#: Public exponent bounds: at most the ``rsa`` crate's ``MAX_PUB_EXPONENT`` (2**33 - 1),
#: as in the reference; at least 3 and odd (the crate's minimum of 2 admits no valid key).
_RSA_MIN_PUBLIC_EXPONENT: Final = 3
_RSA_MAX_PUBLIC_EXPONENT: Final = (1 << 33) - 1

_RSA_ALGS: Final[Mapping[str, KeyAlgorithm]] = {
    ALG_RSA1_5: ALG_RSA1_5,
    ALG_RSA_OAEP_256: ALG_RSA_OAEP_256,
}

_CEK_BYTES: Final = 32  # AES-256
_IV_BYTES: Final = 12  # 96-bit GCM nonce
_GCM_TAG_BYTES: Final = 16
_KW_KEY_BITS: Final = 256  # A256KW: the Concat KDF keydatalen

#: JWK ``crv`` -> (curve, coordinate length in bytes). P-384 is deliberately absent: the
#: reference client and server only know P-256 and P-521.
_CURVES: Final[Mapping[str, tuple[ec.EllipticCurve, int]]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-521": (ec.SECP521R1(), 66),
}

_B64URL_NOPAD: Final = re.compile(r"[A-Za-z0-9_-]*")
_B64_ANY: Final = re.compile(r"[A-Za-z0-9_+/-]*={0,2}")


class JweError(Exception):
    """The TEE public key is unusable or the JWE could not be produced.

    Messages are short, name the failed check and never contain key material. The app maps
    this to 401 ``JweError``.
    """


@dataclass(frozen=True, slots=True)
class TeePublicKey:
    """A validated TEE public key and the key-management algorithm the guest asked for.

    Attributes:
        alg: ``RSA1_5``, ``RSA-OAEP-256`` (RSA keys) or ``ECDH-ES+A256KW`` (EC keys).
        public_key: The key itself; an EC key is on P-256 or P-521.
    """

    alg: KeyAlgorithm
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey

    def __post_init__(self) -> None:
        """Re-check the invariants, so that no construction path skips validation.

        Raises:
            JweError: ``alg`` does not fit the key, or the key is outside our limits.
        """
        if isinstance(self.public_key, rsa.RSAPublicKey):
            if self.alg not in (ALG_RSA1_5, ALG_RSA_OAEP_256):
                raise JweError("tee-pubkey: alg does not match an rsa key")
            _check_rsa_numbers(self.public_key.public_numbers())
        elif isinstance(self.public_key, ec.EllipticCurvePublicKey):
            if self.alg != ALG_ECDH_ES_A256KW:
                raise JweError("tee-pubkey: alg does not match an ec key")
            if _crv_name(self.public_key.curve) is None:
                raise JweError("tee-pubkey: unsupported crv")
        else:  # pragma: no cover - guarded by the type annotation
            raise JweError("tee-pubkey: unsupported key type")

    @property
    def crv(self) -> str | None:
        """The JWK curve name (``P-256``/``P-521``) of an EC key, ``None`` for RSA."""
        if isinstance(self.public_key, ec.EllipticCurvePublicKey):
            return _crv_name(self.public_key.curve)
        return None


# ---------------------------------------------------------------- parsing the JWK


#: The JWK members :func:`parse_tee_pubkey` reads; its result depends on nothing else.
_JWK_MEMBERS: Final = ("kty", "alg", "crv", "x", "y", "n", "e", "k-mod", "k-exp")
#: Parsed keys remembered (a guest fetching several resources with one token sends the
#: same key each time; parsing an RSA key or checking a point is most of the work).
TEE_KEY_CACHE_ENTRIES: Final = 256


def parse_tee_pubkey(jwk: Mapping[str, Any]) -> TeePublicKey:
    """Parse and validate the guest's ``tee-pubkey`` JWK (recent keys are remembered).

    Accepted forms (members other than these are ignored, as serde ignores them):

    * ``{"kty":"RSA","alg":"RSA1_5"|"RSA-OAEP-256","n":…,"e":…}`` (kbs-types >= 0.4);
    * ``{"kty":"EC","crv":"P-256"|"P-521","alg":"ECDH-ES+A256KW","x":…,"y":…}``
      (kbs-types >= 0.7) with fixed-length coordinates of a point on the curve;
    * the kty-less forms of protocol 0.1.0 guests, RSA1_5 only:
      ``{"alg":"RSA1_5","k-mod":…,"k-exp":…}`` (kbs-types 0.2, trustee v0.5) and
      ``{"alg":"RSA1_5","n":…,"e":…}`` (kbs-types 0.3, trustee v0.6). Servers of that era
      decoded these with the standard base64 alphabet and guests encoded them so, hence
      either alphabet, padded or not, is accepted for these two forms only.

    Modern forms need base64url without padding and canonical trailing bits, as the
    reference's ``URL_SAFE_NO_PAD`` decoder does.

    Args:
        jwk: The decoded JSON object.

    Returns:
        The validated key.

    Raises:
        JweError: The object has the wrong shape, names an algorithm or curve we do not
            support, or carries a key that fails validation (bad encoding, point not on
            the curve, RSA modulus outside 2048..4096 bits, bad exponent).
    """
    if not isinstance(jwk, Mapping):
        raise JweError("tee-pubkey: not a json object")
    members: list[str | None] = []
    for name in _JWK_MEMBERS:
        value = jwk.get(name)
        if name in jwk and not isinstance(value, str):
            return _parse(jwk)  # refused below; nothing to remember
        members.append(value)
    # The result depends on these members alone (None: absent), so they are the whole
    # cache key; failures are not remembered and raise again.
    return _parse_members(tuple(members))


@functools.lru_cache(maxsize=TEE_KEY_CACHE_ENTRIES)
def _parse_members(members: tuple[str | None, ...]) -> TeePublicKey:
    jwk = {
        name: value for name, value in zip(_JWK_MEMBERS, members, strict=True) if value is not None
    }
    return _parse(jwk)


def _parse(jwk: Mapping[str, Any]) -> TeePublicKey:
    """:func:`parse_tee_pubkey` without the cache."""
    if "kty" not in jwk:
        return _parse_legacy_rsa(jwk)
    kty = jwk["kty"]
    if kty == "RSA":
        rsa_alg = _RSA_ALGS.get(_member(jwk, "alg"))
        if rsa_alg is None:
            raise JweError("tee-pubkey: unsupported alg for kty RSA")
        n = _b64url_decode(_member(jwk, "n"), what="n")
        e = _b64url_decode(_member(jwk, "e"), what="e")
        return _rsa_key(rsa_alg, n, e)
    if kty == "EC":
        crv = _member(jwk, "crv")
        alg = _member(jwk, "alg")
        x_text = _member(jwk, "x")
        y_text = _member(jwk, "y")
        if alg != ALG_ECDH_ES_A256KW:
            raise JweError("tee-pubkey: unsupported alg for kty EC")
        if crv not in _CURVES:
            raise JweError("tee-pubkey: unsupported crv")
        curve, size = _CURVES[crv]
        x = _b64url_decode(x_text, what="x")
        y = _b64url_decode(y_text, what="y")
        if len(x) != size or len(y) != size:
            raise JweError("tee-pubkey: coordinate length does not match crv")
        try:
            # Validates that the point is on the curve (and that x, y < p).
            public_key = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y)
        except ValueError as exc:
            raise JweError("tee-pubkey: point is not on the curve") from exc
        return TeePublicKey(alg=ALG_ECDH_ES_A256KW, public_key=public_key)
    raise JweError("tee-pubkey: unsupported kty")


def _parse_legacy_rsa(jwk: Mapping[str, Any]) -> TeePublicKey:
    if "k-mod" in jwk or "k-exp" in jwk:
        n_name, e_name = "k-mod", "k-exp"
    elif "n" in jwk or "e" in jwk:
        n_name, e_name = "n", "e"
    else:
        raise JweError("tee-pubkey: missing member 'kty'")
    n_text, e_text = _member(jwk, n_name), _member(jwk, e_name)
    # Servers of protocol 0.1.x (trustee v0.5-v0.11) only ever did RSA1_5.
    if _member(jwk, "alg") != ALG_RSA1_5:
        raise JweError("tee-pubkey: unsupported alg for a key without kty")
    n = _b64_lenient_decode(n_text, what=n_name)
    e = _b64_lenient_decode(e_text, what=e_name)
    return _rsa_key(ALG_RSA1_5, n, e)


def _rsa_key(alg: KeyAlgorithm, n_bytes: bytes, e_bytes: bytes) -> TeePublicKey:
    # Leading zero octets are tolerated, as the reference's BigUint::from_bytes_be does.
    numbers = rsa.RSAPublicNumbers(
        e=int.from_bytes(e_bytes, "big"), n=int.from_bytes(n_bytes, "big")
    )
    _check_rsa_numbers(numbers)
    try:
        public_key = numbers.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:  # pragma: no cover - checked above
        raise JweError("tee-pubkey: invalid rsa public key") from exc
    return TeePublicKey(alg=alg, public_key=public_key)


def _check_rsa_numbers(numbers: rsa.RSAPublicNumbers) -> None:
    bits = numbers.n.bit_length()
    if bits < RSA_MIN_MODULUS_BITS:
        raise JweError("tee-pubkey: rsa modulus shorter than 2048 bits")
    if bits > RSA_MAX_MODULUS_BITS:
        raise JweError("tee-pubkey: rsa modulus longer than 4096 bits")
    if numbers.n % 2 == 0:  # not a product of two odd primes; OpenSSL does not check
        raise JweError("tee-pubkey: rsa modulus is even")
    e = numbers.e
    if not _RSA_MIN_PUBLIC_EXPONENT <= e <= _RSA_MAX_PUBLIC_EXPONENT or e % 2 == 0:
        raise JweError("tee-pubkey: rsa public exponent out of range")


def _member(jwk: Mapping[str, Any], name: str) -> str:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise JweError(f"tee-pubkey: missing or non-string member '{name}'")
    return value


def _b64url_decode(text: str, *, what: str) -> bytes:
    """Strict base64url without padding, like Rust ``base64``'s ``URL_SAFE_NO_PAD``."""
    if len(text) % 4 == 1 or _B64URL_NOPAD.fullmatch(text) is None:
        raise JweError(f"tee-pubkey: '{what}' is not base64url without padding")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64url_encode(raw) != text:  # non-zero trailing bits
        raise JweError(f"tee-pubkey: '{what}' is not canonical base64url")
    return raw


def _b64_lenient_decode(text: str, *, what: str) -> bytes:
    """Either base64 alphabet, padding optional (0.1.0-era keys only)."""
    if _B64_ANY.fullmatch(text) is None:
        raise JweError(f"tee-pubkey: '{what}' is not base64")
    body = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except binascii.Error as exc:
        raise JweError(f"tee-pubkey: '{what}' is not base64") from exc


def _crv_name(curve: ec.EllipticCurve) -> str | None:
    for name, (known, _) in _CURVES.items():
        if curve.name == known.name:
            return name
    return None


# ---------------------------------------------------------------- building the JWE


def serialize_protected_header(alg: str, enc: str, extra: Mapping[str, Any]) -> str:
    """Serialize a protected header the way kbs-types ``ProtectedHeader`` does.

    serde_json writes the struct fields ``alg`` and ``enc`` first, then the flattened
    ``other_fields`` map; that map (and any nested object) is a ``BTreeMap``, so its keys
    come out sorted. Output is compact, with non-ASCII characters written raw (UTF-8).
    Sorted keys also survive a client built with serde_json's ``preserve_order`` feature,
    which keeps whatever order it received.

    Args:
        alg: The key-management algorithm.
        enc: The content-encryption algorithm.
        extra: Further header members (for us only ``epk``); must not repeat alg/enc.

    Returns:
        The base64url (no padding) encoding of the header JSON, i.e. the ``protected``
        member and, as ASCII, the AES-GCM AAD.

    Raises:
        ValueError: ``extra`` repeats ``alg`` or ``enc``.
    """
    if "alg" in extra or "enc" in extra:
        raise ValueError("extra header members must not repeat alg or enc")
    parts = ['"alg":' + _json(alg), '"enc":' + _json(enc)]
    if extra:
        # The members of the sorted-keys dump, without its braces.
        parts.append(_json(dict(extra))[1:-1])
    return _b64url_encode(("{" + ",".join(parts) + "}").encode())


def wrap(key: TeePublicKey, plaintext: bytes, *, entropy: Entropy) -> dict[str, str]:
    """Encrypt ``plaintext`` to the guest's key as a flattened JSON JWE (protocol >= 0.2).

    Steps:
      1. Draw a 32-byte CEK and a 12-byte IV from ``entropy``.
      2. Encrypt the CEK for the key (``key.alg``), building the protected header; for
         ECDH-ES the header carries the ephemeral public key as ``epk``.
      3. AES-256-GCM encrypt the plaintext with AAD = ASCII of ``protected``.

    Args:
        key: The validated TEE key.
        plaintext: The resource bytes.
        entropy: ``entropy(n)`` returns ``n`` random bytes (CEK and IV).

    Returns:
        ``{"protected","encrypted_key","iv","ciphertext","tag"}`` in that order, each
        base64url without padding.

    Raises:
        JweError: The key cannot be used (not expected after :func:`parse_tee_pubkey`).
        ValueError: ``entropy`` returned the wrong number of bytes.
    """
    # 1. Fresh CEK and IV.
    cek = _draw(entropy, _CEK_BYTES)
    iv = _draw(entropy, _IV_BYTES)

    # 2. Key management and the header it implies.
    encrypted_key, protected = _encrypt_cek(key, cek)

    # 3. Content encryption; AESGCM returns ciphertext || tag.
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    ciphertext, tag = sealed[:-_GCM_TAG_BYTES], sealed[-_GCM_TAG_BYTES:]
    return {
        "protected": protected,
        "encrypted_key": _b64url_encode(encrypted_key),
        "iv": _b64url_encode(iv),
        "ciphertext": _b64url_encode(ciphertext),
        "tag": _b64url_encode(tag),
    }


def wrap_legacy(key: TeePublicKey, plaintext: bytes, *, entropy: Entropy) -> dict[str, str]:
    """Encrypt for a protocol 0.1.x session, in the pre-RFC shape those guests parse.

    Trustee v0.5 to v0.11 produced this (``src/api_server/src/resource/mod.rs`` in v0.5,
    ``kbs/src/api/src/http/resource.rs`` in v0.9, ``kbs/src/jwe.rs`` until commit d8c7477a
    moved to protocol 0.2.0), and guest-components up to v0.11 decrypted it:

    * ``protected``: the raw JSON text ``{"alg":"RSA1_5","enc":"A256GCM"}``, not base64;
    * ``encrypted_key``, ``iv``: base64url without padding, as today;
    * ``ciphertext``: base64url of the GCM ciphertext with the 16-byte tag appended;
    * ``tag``: the empty string; no AAD is used.

    Only ``RSA1_5`` existed then; any other key is refused, as the reference did.

    Args:
        key: The validated TEE key; must have ``alg`` ``RSA1_5``.
        plaintext: The resource bytes.
        entropy: ``entropy(n)`` returns ``n`` random bytes (CEK and IV).

    Returns:
        ``{"protected","encrypted_key","iv","ciphertext","tag"}`` in that order.

    Raises:
        JweError: The key is not an RSA1_5 key.
        ValueError: ``entropy`` returned the wrong number of bytes.
    """
    if key.alg != ALG_RSA1_5 or not isinstance(key.public_key, rsa.RSAPublicKey):
        raise JweError("legacy jwe: only RSA1_5 keys are supported")
    cek = _draw(entropy, _CEK_BYTES)
    iv = _draw(entropy, _IV_BYTES)
    _logger.warning("encrypting with deprecated RSA1_5 for a protocol 0.1.x session")
    # OpenSSL draws the PKCS#1 v1.5 padding bytes itself; they are not a protocol value.
    encrypted_key = key.public_key.encrypt(cek, padding.PKCS1v15())
    sealed = AESGCM(cek).encrypt(iv, plaintext, None)
    return {
        "protected": '{"alg":"RSA1_5","enc":"A256GCM"}',
        "encrypted_key": _b64url_encode(encrypted_key),
        "iv": _b64url_encode(iv),
        "ciphertext": _b64url_encode(sealed),
        "tag": "",
    }


def concat_kdf(
    shared_secret: bytes,
    *,
    algorithm_id: str,
    key_bits: int,
    party_u_info: bytes = b"",
    party_v_info: bytes = b"",
) -> bytes:
    """Derive a key with the JWA Concat KDF (RFC 7518 §4.6.2, NIST SP 800-56A, SHA-256).

    OtherInfo = AlgorithmID || PartyUInfo || PartyVInfo || SuppPubInfo, where the first
    three are 32-bit big-endian length-prefixed octet strings and SuppPubInfo is
    ``key_bits`` as a 32-bit big-endian integer; SuppPrivInfo is empty.

    Args:
        shared_secret: Z, the ECDH shared secret (the x-coordinate, fixed length).
        algorithm_id: ``alg`` for key agreement with key wrapping (``ECDH-ES+A256KW``),
            ``enc`` for direct key agreement.
        key_bits: keydatalen in bits (a multiple of 8).
        party_u_info: Decoded ``apu`` (we never send one).
        party_v_info: Decoded ``apv`` (we never send one).

    Returns:
        ``key_bits // 8`` bytes of key material.

    Raises:
        ValueError: ``key_bits`` is not a positive multiple of 8.
    """
    if key_bits <= 0 or key_bits % 8:
        raise ValueError("key_bits must be a positive multiple of 8")
    algorithm = algorithm_id.encode("ascii")
    other_info = b"".join(
        (
            struct.pack(">I", len(algorithm)) + algorithm,
            struct.pack(">I", len(party_u_info)) + party_u_info,
            struct.pack(">I", len(party_v_info)) + party_v_info,
            struct.pack(">I", key_bits),
        )
    )
    return ConcatKDFHash(hashes.SHA256(), key_bits // 8, other_info).derive(shared_secret)


def _encrypt_cek(key: TeePublicKey, cek: bytes) -> tuple[bytes, str]:
    """Return (encrypted_key, protected) for ``key.alg``."""
    public_key = key.public_key
    if isinstance(public_key, rsa.RSAPublicKey):
        protected = serialize_protected_header(key.alg, ENC_A256GCM, {})
        # OpenSSL draws the OAEP seed / PKCS#1 padding itself; not a protocol value.
        if key.alg == ALG_RSA_OAEP_256:
            oaep = padding.OAEP(
                mgf=padding.MGF1(algorithm=hashes.SHA256()),
                algorithm=hashes.SHA256(),
                label=None,
            )
            return public_key.encrypt(cek, oaep), protected
        if key.alg == ALG_RSA1_5:
            _logger.warning("encrypting with deprecated RSA1_5 at the guest's request")
            return public_key.encrypt(cek, padding.PKCS1v15()), protected
        raise JweError("jwe: unsupported alg for an rsa key")  # pragma: no cover

    # ECDH-ES+A256KW. The ephemeral key comes from cryptography's own CSPRNG, not from
    # `entropy`: cryptography offers no way to generate a key from caller-supplied bytes
    # without hand-rolled scalar reduction, and the ephemeral key is not a protocol value
    # anyone needs to reproduce. CEK and IV, which are, come from `entropy`.
    crv = key.crv
    if crv is None:  # pragma: no cover - TeePublicKey guarantees a supported curve
        raise JweError("jwe: unsupported crv")
    curve, size = _CURVES[crv]
    ephemeral = ec.generate_private_key(curve)
    z = ephemeral.exchange(ec.ECDH(), public_key)
    kek = concat_kdf(z, algorithm_id=ALG_ECDH_ES_A256KW, key_bits=_KW_KEY_BITS)
    encrypted_key = keywrap.aes_key_wrap(kek, cek)
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    epk = {
        "crv": crv,
        "kty": "EC",
        "x": _b64url_encode(point[1 : 1 + size]),
        "y": _b64url_encode(point[1 + size :]),
    }
    protected = serialize_protected_header(ALG_ECDH_ES_A256KW, ENC_A256GCM, {"epk": epk})
    return encrypted_key, protected


def _draw(entropy: Entropy, n: int) -> bytes:
    value = entropy(n)
    if len(value) != n:
        raise ValueError(f"entropy returned {len(value)} bytes, expected {n}")
    return value


def _json(value: Any) -> str:
    # For values without floats (a header has none), the bytes of json.dumps(value,
    # ensure_ascii=False, separators=(",", ":"), sort_keys=True): test_jsoncodec.py.
    return jsoncodec.dumps(value, sort_keys=True).decode()


def _b64url_encode(raw: bytes) -> str:
    return pybase64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
