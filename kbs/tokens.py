# SPDX-License-Identifier: Apache-2.0
"""Attestation tokens: signing our tokens and verifying tokens on resource requests.

Two profiles are signed here. EAR tokens (the KBS's and the attestation-service API's)
are ES256; Simple tokens (the legacy profile of Trustee's attestation service, which TNG
<= v2.3 requires) are RS384. Every header carries the signer's public key twice over: as
the reference does (``jwk``, with the certificate chain in ``x5c``) and as a ``kid``
(RFC 7638 thumbprint) that our JWKS endpoint publishes. A resource request's token is
verified on every request, even when it comes from the session: signature, then ``exp``
(judged at the request's instant), then the TEE public key is extracted.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

import jwt
import pybase64
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from attestation.lru import Lru
from kbs import jsoncodec
from kbs.entropy import Entropy
from kbs.errors import TokenVerifierError

_logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TEEKEY_POINTERS",
    "SimpleTokenSigner",
    "TokenSigner",
    "TokenVerifier",
    "X5cEncoding",
    "jwk_thumbprint",
    "public_jwk",
    "resolve_pointer",
    "rsa_public_jwk",
    "self_signed_certificate",
]

#: How ``x5c`` entries are written: URL-safe without padding (TNG, Trustee <= v0.20) or
#: standard base64 (RFC 7517, Trustee v0.21+).
X5cEncoding = Literal["base64url", "base64"]

#: Leeway on ``exp`` (seconds), as the reference's JWT library applies.
EXP_LEEWAY_S: Final = 60

#: Largest token accepted (verbose EAR tokens with event logs reach ~100 KiB).
MAX_TOKEN_BYTES: Final = 512 * 1024
#: How many of our own tokens whose signature checked out a verifier remembers (by the
#: SHA-256 of the exact token text), so a guest's repeated Bearer fetches skip the ES256
#: verify; ``exp`` and ``nbf`` are still judged on every request.
VERIFIED_TOKEN_CACHE_ENTRIES: Final = 4096
#: Of those, how many most recently used tokens also keep their decoded claims (with
#: ``exp`` and ``nbf``), so a repeated fetch skips decoding the payload (a TDX token's
#: ~40 KB of claims: 0.2-0.6 ms a fetch). Payloads over :data:`CLAIMS_CACHE_MAX_PAYLOAD`
#: base64url characters are not kept, and the kept ones add up to at most
#: :data:`CLAIMS_CACHE_BUDGET` characters. Decoded claims take ~2.2 bytes of memory per
#: payload character, so the budget bounds the cache at ~9 MiB per process (~75 TDX
#: tokens, or all 256 sample ones).
CLAIMS_CACHE_ENTRIES: Final = 256
CLAIMS_CACHE_MAX_PAYLOAD: Final = 128 * 1024
CLAIMS_CACHE_BUDGET: Final = 4 * 1024 * 1024

#: Where tokens of known issuers keep the TEE key, tried after ``extra_teekey_paths``.
DEFAULT_TEEKEY_POINTERS: Final = (
    "/tdx/attester_runtime_data/tee-pubkey",
    "/tdx/attester_user_data/tee-pubkey",
    "/customized_claims/runtime_data/tee-pubkey",
    "/submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey",
    "/tee-pubkey",
)

#: Smallest RSA key accepted for signing or verifying tokens.
MIN_RSA_BITS: Final = 2048

#: Length and alphabet of a Simple token's ``jti`` (the reference's 10 alphanumerics).
JTI_LENGTH: Final = 10
_JTI_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

#: Lifetime of a certificate generated for a generated signing key.
GENERATED_CERT_VALIDITY: Final = dt.timedelta(days=3650)
#: Subject alternative name of a generated certificate (it names no host).
GENERATED_CERT_URI: Final = "urn:confidential-kbs:token-signer"
#: Back-dating of a generated certificate's notBefore, for relying parties whose clocks lag.
GENERATED_CERT_BACKDATE: Final = dt.timedelta(hours=1)

#: JWS algorithms a token may use; the key's own ``alg`` must also agree.
_ALGORITHMS: Final = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "EdDSA": ("OKP", "Ed25519"),
}


def _b64url(data: bytes) -> str:
    return pybase64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The JWK of a P-256 public key, members as the reference emits them."""
    numbers = key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "alg": "ES256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }


def rsa_public_jwk(key: rsa.RSAPublicKey) -> dict[str, str]:
    """The JWK of an RSA public key for RS384, members as the reference emits them."""
    numbers = key.public_numbers()
    return {
        "kty": "RSA",
        "alg": "RS384",
        "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
    }


def _encode_x5c(chain: Sequence[x509.Certificate], encoding: X5cEncoding) -> list[str]:
    ders = [c.public_bytes(serialization.Encoding.DER) for c in chain]
    if encoding == "base64url":
        return [_b64url(der) for der in ders]
    return [base64.b64encode(der).decode() for der in ders]


def self_signed_certificate(
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    *,
    common_name: str,
    at: dt.datetime,
    serial: int,
) -> x509.Certificate:
    """A self-signed certificate for a token signing key, usable as its own trust anchor.

    Shaped for the verifiers that check token signer chains: ``CA:FALSE`` (rustls-webpki
    refuses a CA certificate as an end entity) and no key usage or extended key usage
    extension, so TNG >= v2.4 (client-auth usage), TNG v2.2 (server-auth usage) and
    OpenSSL (which would otherwise want ``keyCertSign`` on a self-issued anchor) accept it.
    Key identifiers and a URI subject alternative name satisfy the stricter Web PKI
    profile (e.g. ``cryptography``'s verifier), which wants both.
    """
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "confidential-kbs"),
        ]
    )
    public = private_key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(at - GENERATED_CERT_BACKDATE)
        .not_valid_after(at + GENERATED_CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(GENERATED_CERT_URI)]),
            critical=False,
        )
        .sign(private_key, hashes.SHA256())
    )


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of an EC, RSA or OKP JWK (base64url)."""
    kty = jwk.get("kty")
    if kty == "EC":
        members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    elif kty == "RSA":
        members = {k: jwk[k] for k in ("e", "kty", "n")}
    elif kty == "OKP":
        members = {k: jwk[k] for k in ("crv", "kty", "x")}
    else:
        raise ValueError(f"unsupported kty {kty!r}")
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return _b64url(hashlib.sha256(canonical).digest())


class _JwsSigner:
    """What both token signers share: header, JWK Set entry, certificate chain."""

    algorithm: ClassVar[str]
    _key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey

    def _setup(
        self,
        base_jwk: dict[str, Any],
        cert_chain: Sequence[x509.Certificate],
        cert_url: str | None,
        x5c_encoding: X5cEncoding,
    ) -> None:
        if cert_chain and not _same_public_key(cert_chain[0].public_key(), self.public_key):
            raise ValueError("the signer certificate does not match the signing key")
        self.cert_chain: tuple[x509.Certificate, ...] = tuple(cert_chain)
        self.kid = jwk_thumbprint(base_jwk)
        jwk = dict(base_jwk)
        published = dict(base_jwk)
        if cert_url:
            jwk["x5u"] = published["x5u"] = cert_url
        if cert_chain:
            jwk["x5c"] = _encode_x5c(cert_chain, x5c_encoding)
            published["x5c"] = _encode_x5c(cert_chain, "base64")
        #: The JWK in token headers (``x5c`` in the configured encoding).
        self.jwk: Mapping[str, Any] = jwk
        #: The JWK Set entry (``x5c`` in standard base64, as RFC 7517 says).
        self.jwks_entry: Mapping[str, Any] = {**published, "kid": self.kid, "use": "sig"}
        # The header as PyJWT writes it (keys sorted, ASCII), encoded once.
        header = {"typ": "JWT", "alg": self.algorithm, "jwk": dict(jwk), "kid": self.kid}
        self._header_b64 = _b64url(
            json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
        )

    def sign(self, claims: Mapping[str, Any]) -> str:
        """Return the compact JWS of ``claims`` (payload: compact UTF-8 JSON).

        Raises:
            TypeError: ``claims`` holds a value that is not JSON.
        """
        signing_input = f"{self._header_b64}.{_b64url(jsoncodec.dumps(dict(claims)))}"
        return f"{signing_input}.{_b64url(self._signature(signing_input.encode('ascii')))}"

    def _signature(self, data: bytes) -> bytes:
        """The JWS signature of ``data`` with this signer's key and algorithm."""
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):  # ES256: r || s, 32 bytes each
            r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")
        return key.sign(data, padding.PKCS1v15(), hashes.SHA384())  # RS384

    def certificate_pem(self) -> str:
        """The signer's certificate chain as PEM (leaf first), or ``""`` if none."""
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in self.cert_chain)

    def jwks(self) -> dict[str, Any]:
        """The JWK Set publishing this signer's key."""
        return {"keys": [dict(self.jwks_entry)]}


class TokenSigner(_JwsSigner):
    """Signs EAR tokens with one EC P-256 key."""

    algorithm: ClassVar[str] = "ES256"
    public_key: ec.EllipticCurvePublicKey

    def __init__(
        self,
        private_key: ec.EllipticCurvePrivateKey,
        *,
        cert_chain: Sequence[x509.Certificate] = (),
        cert_url: str | None = None,
        x5c_encoding: X5cEncoding = "base64",
    ) -> None:
        """Sign with ``private_key``; ``cert_chain`` (leaf first) goes into ``jwk.x5c``.

        Raises:
            ValueError: the key is not on P-256, or the chain's leaf is another key.
        """
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError("the token signing key must be an EC P-256 key")
        self._key = private_key
        self.public_key = private_key.public_key()
        self._setup(public_jwk(self.public_key), cert_chain, cert_url, x5c_encoding)


class SimpleTokenSigner(_JwsSigner):
    """Signs Simple tokens (the reference's legacy RS384 profile) with one RSA key.

    The ``jwk`` goes into the header (TNG >= v1.0.6 reads it there) and, as
    :meth:`sign_simple` writes it, into the claims too (older TNG reads it there).
    """

    algorithm: ClassVar[str] = "RS384"
    public_key: rsa.RSAPublicKey

    def __init__(
        self,
        private_key: rsa.RSAPrivateKey,
        *,
        cert_chain: Sequence[x509.Certificate] = (),
        cert_url: str | None = None,
        x5c_encoding: X5cEncoding = "base64url",
    ) -> None:
        """Sign with ``private_key``; ``cert_chain`` (leaf first) goes into ``jwk.x5c``.

        Raises:
            ValueError: the key has fewer than 2048 bits, or the chain's leaf is another
                key.
        """
        if private_key.key_size < MIN_RSA_BITS:
            raise ValueError("the Simple token signing key must be RSA with at least 2048 bits")
        self._key = private_key
        self.public_key = private_key.public_key()
        self._setup(rsa_public_jwk(self.public_key), cert_chain, cert_url, x5c_encoding)

    def sign_simple(
        self,
        claims: Mapping[str, Any],
        *,
        at: dt.datetime,
        duration: dt.timedelta,
        issuer: str,
        entropy: Entropy,
    ) -> tuple[str, dict[str, Any]]:
        """Sign a Simple token: the reference's registered claims, then ``claims``.

        Returns the compact JWS and the full claim set.
        """
        iat = int(at.timestamp())
        full: dict[str, Any] = {
            "iss": issuer,
            "iat": iat,
            "jti": _jti(entropy),
            "nbf": iat,
            "exp": iat + int(duration.total_seconds()),
            **claims,
            "jwk": dict(self.jwk),
        }
        return self.sign(full), full


def _jti(entropy: Entropy) -> str:
    # Rejection sampling keeps the 62 symbols equally likely.
    limit = 256 - 256 % len(_JTI_ALPHABET)
    out: list[str] = []
    while len(out) < JTI_LENGTH:
        out.extend(_JTI_ALPHABET[b % len(_JTI_ALPHABET)] for b in entropy(16) if b < limit)
    return "".join(out[:JTI_LENGTH])


@dataclass(frozen=True, slots=True)
class _TrustedKey:
    key: Any
    alg: str | None


def _key_from_jwk(jwk: Mapping[str, Any]) -> Any:
    kty = jwk.get("kty")
    data = json.dumps(dict(jwk))
    if kty == "EC":
        return ECAlgorithm.from_jwk(data)
    if kty == "RSA":
        return RSAAlgorithm.from_jwk(data)
    if kty == "OKP":
        return OKPAlgorithm.from_jwk(data)
    raise TokenVerifierError(f"unsupported key type {kty!r} in token signer jwk")


def _same_public_key(a: Any, b: Any) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    try:
        return bool(a.public_bytes(enc, fmt) == b.public_bytes(enc, fmt))
    except (AttributeError, ValueError):
        return False


@dataclass
class TokenVerifier:
    """Verifies attestation tokens from our own signer and from configured issuers.

    Attributes:
        own_keys: public keys of this deployment's signers (always trusted): the EAR
            key (ES256) and the Simple key (RS384).
        trusted_certs: CA certificates; a token whose header ``jwk`` carries an ``x5c``
            chain to one of them is trusted (the reference's ``trusted_certs_paths``).
        trusted_jwks: keys by ``kid`` from configured JWK sets (``trusted_jwk_sets``).
        insecure_header_jwk: trust whatever key the token's header carries.
        extra_teekey_paths: JSON pointers tried first when extracting the TEE key.
    """

    own_keys: Sequence[ec.EllipticCurvePublicKey | rsa.RSAPublicKey]
    trusted_certs: Sequence[x509.Certificate] = ()
    trusted_jwks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    insecure_header_jwk: bool = False
    extra_teekey_paths: Sequence[str] = ()

    def __post_init__(self) -> None:
        """Index this deployment's own ES256 keys for :meth:`_verify_own_es256`."""
        self._own_es256: dict[tuple[str, str], tuple[str, ec.EllipticCurvePublicKey]] = {}
        for key in self.own_keys:
            if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
                jwk = public_jwk(key)
                self._own_es256[jwk["x"], jwk["y"]] = (jwk_thumbprint(jwk), key)
        # SHA-256 of tokens whose header and signature passed _verify_own_es256 (LRU).
        self._verified: Lru[bytes, bool] = Lru(VERIFIED_TOKEN_CACHE_ENTRIES)
        # The newest of those, within a budget of payload size: their decoded claims (LRU).
        self._claims: Lru[bytes, dict[str, Any]] = Lru(
            CLAIMS_CACHE_ENTRIES, budget=CLAIMS_CACHE_BUDGET
        )

    def verify(self, token: str, *, at: dt.datetime) -> dict[str, Any]:
        """Verify ``token`` at instant ``at`` and return its claims.

        The claims of our own tokens may be shared between calls for the same token
        (see :data:`CLAIMS_CACHE_ENTRIES`): callers must not modify them.

        Raises:
            TokenVerifierError: malformed token, ``alg=none`` or unknown algorithm,
                untrusted signer, bad signature, missing or past ``exp``.
        """
        return self.verify_identified(token, at=at)[0]

    def verify_identified(self, token: str, *, at: dt.datetime) -> tuple[dict[str, Any], bytes]:
        """:meth:`verify`, and the SHA-256 of the token's UTF-8 text, which it computes.

        The digest names the token (:func:`kbs.audit.token_id` is its hex); a TDX token
        is ~53 KB, so hashing it once instead of twice is worth the second method.

        Raises:
            TokenVerifierError: as :meth:`verify`.
        """
        # 1. Size and shape before any parsing work.
        if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:  # noqa: PLR2004
            raise TokenVerifierError("malformed attestation token")
        digest = hashlib.sha256(token.encode()).digest()
        # Our own EAR tokens (nearly every request) take the strict direct path.
        own = self._verify_own_es256(token, digest, at=at)
        if own is not None:
            return own, digest
        return self._verify_generic(token, at=at), digest

    def _verify_generic(self, token: str, *, at: dt.datetime) -> dict[str, Any]:
        """Any trusted signer's token, through PyJWT (see :meth:`verify`)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenVerifierError("malformed attestation token header") from exc
        # 2. The algorithm must be one we accept; "none" never is.
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in _ALGORITHMS:
            raise TokenVerifierError(f"token algorithm {alg!r} is not accepted")
        # 3. Select a trusted key for this token.
        trusted = self._select_key(header, at=at)
        if trusted.alg is not None and trusted.alg != alg:
            raise TokenVerifierError("token algorithm does not match its signing key")
        _check_key_type(trusted.key, alg)
        # 4. Signature (PyJWT), then expiry judged at the request's instant.
        try:
            claims = jwt.decode(
                token,
                key=trusted.key,
                algorithms=[alg],
                options={
                    "verify_signature": True,
                    "verify_exp": False,  # checked below against `at`, not the wall clock
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise TokenVerifierError("token signature verification failed") from exc
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise TokenVerifierError("token has no valid exp claim")
        if at.timestamp() > exp + EXP_LEEWAY_S:
            raise TokenVerifierError("token has expired")
        return claims

    def _verify_own_es256(
        self, token: str, digest: bytes, *, at: dt.datetime
    ) -> dict[str, Any] | None:
        """Verify a token signed by this deployment's EAR key; ``None`` if it is not one.

        The generic path (PyJWT) costs a per-character Python check of every segment;
        a verbose EAR token is tens of KiB. This path accepts only the exact header our
        :class:`TokenSigner` writes, and answers ``None`` (the generic path decides) for
        anything else, so what is accepted or refused does not change:

        1. every segment is base64url without padding;
        2. the header is ``typ``/``alg``/``jwk``/``kid`` and nothing else, ``alg`` is
           ``ES256``, and ``jwk`` (P-256 ``x``, ``y``) and ``kid`` name one of our keys;
        3. the signature is 64 bytes (``r || s``) and verifies over ``header.payload``;
        4. the payload is a JSON object whose ``exp`` (with leeway) has not passed at
           ``at``, and whose ``nbf``, if present, has.

        A token that passed 1 to 3 is remembered (bounded, see
        :data:`VERIFIED_TOKEN_CACHE_ENTRIES`) and then only checked by 4; its claims are
        kept too, within :data:`CLAIMS_CACHE_BUDGET`, so 4 is then only the
        ``exp``/``nbf`` comparison.

        Raises:
            TokenVerifierError: the token names our key but fails a check.
        """
        header_b64, payload_b64, signature_b64 = token.split(".")
        # 0. This exact token (``digest`` is its SHA-256) passed 1 to 3 before: our keys
        #    are fixed for the verifier's life, so it passes them again; only step 4
        #    depends on the time.
        claims = self._claims.get(digest)
        if claims is not None:
            _check_window(claims, at=at)
            return claims
        if self._verified.get(digest):
            return self._remember_claims(digest, payload_b64, at=at)
        # 1 and 2. The header, ours or not.
        key = self._own_header_key(header_b64)
        if key is None:
            return None
        # 3. Signature.
        _verify_es256(key, f"{header_b64}.{payload_b64}", signature_b64)
        self._verified.put(digest, True)  # noqa: FBT003 - used as a set
        # 4. Claims and their validity window, at the request's instant.
        return self._remember_claims(digest, payload_b64, at=at)

    def _remember_claims(
        self, digest: bytes, payload_b64: str, *, at: dt.datetime
    ) -> dict[str, Any]:
        """The timely claims of a verified token, kept unless the payload is too large."""
        claims = _timely_claims(payload_b64, at=at)
        if len(payload_b64) <= CLAIMS_CACHE_MAX_PAYLOAD:
            self._claims.put(digest, claims, weight=len(payload_b64))
        return claims

    def _own_header_key(self, header_b64: str) -> ec.EllipticCurvePublicKey | None:
        """Our key if ``header_b64`` is exactly the header we write, else ``None``.

        Raises:
            TokenVerifierError: the header names our key with another algorithm.
        """
        if len(header_b64) > _MAX_OWN_HEADER_B64:
            return None
        try:
            header = jsoncodec.loads(_b64url_decode(header_b64))
        except (ValueError, RecursionError):
            return None
        if not isinstance(header, dict) or header.keys() != _OWN_HEADER_KEYS:
            return None
        jwk = header["jwk"]
        if not isinstance(jwk, dict) or jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
            return None
        own = self._own_es256.get((jwk.get("x"), jwk.get("y")))  # type: ignore[arg-type]
        if own is None or header["kid"] != own[0] or header["typ"] != "JWT":
            return None
        if header["alg"] != "ES256":
            # Our key with another algorithm: alg confusion, refused outright.
            raise TokenVerifierError("token algorithm does not match its signing key")
        return own[1]

    def _select_key(self, header: Mapping[str, Any], *, at: dt.datetime) -> _TrustedKey:
        jwk = header.get("jwk")
        kid = header.get("kid")
        listed = self.trusted_jwks.get(kid) if isinstance(kid, str) else None
        if isinstance(jwk, dict):
            key = _key_from_jwk(jwk)
            # a. Our own signers: ES256 for the EC key, RS384 for the RSA key.
            for own in self.own_keys:
                if _same_public_key(key, own):
                    alg = "RS384" if isinstance(own, rsa.RSAPublicKey) else "ES256"
                    return _TrustedKey(key, alg)
            # b. A configured JWK Set lists this very key under the header's kid (tokens
            #    of another deployment of ours carry both jwk and kid).
            if listed is not None and _same_public_key(_key_from_jwk(listed), key):
                return _TrustedKey(key, listed.get("alg"))
            key_alg = jwk.get("alg") if isinstance(jwk.get("alg"), str) else None
            # c. A certificate chain to a configured trust anchor.
            x5c = jwk.get("x5c")
            if isinstance(x5c, list) and x5c and self.trusted_certs:
                leaf = _verify_x5c(x5c, self.trusted_certs, at=at)
                if not _same_public_key(leaf.public_key(), key):
                    raise TokenVerifierError("token jwk does not match its x5c leaf certificate")
                return _TrustedKey(key, key_alg)
            # d. Deliberately trusting whatever key the header carries.
            if self.insecure_header_jwk:
                if key_alg is None:
                    raise TokenVerifierError("token jwk has no alg")
                return _TrustedKey(key, key_alg)
            raise TokenVerifierError("token signer is not trusted")
        # e. No header key: a configured JWK Set must name the key.
        if listed is not None:
            return _TrustedKey(_key_from_jwk(listed), listed.get("alg"))
        raise TokenVerifierError("token signer is not trusted")

    def tee_pubkey(self, claims: Mapping[str, Any]) -> Mapping[str, Any]:
        """Extract the TEE public key (a JWK object) from verified claims.

        Raises:
            TokenVerifierError: no configured or known pointer yields a JSON object.
        """
        for pointer in (*self.extra_teekey_paths, *DEFAULT_TEEKEY_POINTERS):
            found = resolve_pointer(claims, pointer)
            if found is not None:
                if not isinstance(found, dict):
                    raise TokenVerifierError("tee-pubkey in token is not a JSON object")
                return found
        raise TokenVerifierError("token carries no tee-pubkey")


#: The header our :class:`TokenSigner` writes has these members and no others.
_OWN_HEADER_KEYS: Final = frozenset({"typ", "alg", "jwk", "kid"})
#: Our header carries the certificate chain; anything far larger is not ours.
_MAX_OWN_HEADER_B64: Final = 64 * 1024
_P256_BYTES: Final = 32


def _b64url_decode(segment: str) -> bytes:
    """Decode one base64url segment without padding (RFC 7515 section 2).

    ``+``, ``/`` and ``=`` are refused first; pybase64 then checks the alphabet while it
    decodes (SIMD: 10 us for a TDX token's ~53 KB payload, where binascii's strict decoder
    took 340 us). ``test_tokens.py`` holds it to the standard library's decoder.

    Raises:
        ValueError: a character outside ``A-Za-z0-9-_``, or an impossible length.
    """
    if not segment.isascii() or "+" in segment or "/" in segment or "=" in segment:
        raise ValueError("not base64url")
    return pybase64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)


def _verify_es256(key: ec.EllipticCurvePublicKey, signing_input: str, signature_b64: str) -> None:
    """Check a JWS ES256 signature (``r || s``, 64 bytes) over ``signing_input``.

    Raises:
        TokenVerifierError: the signature is malformed or does not verify.
    """
    raw = b""
    with contextlib.suppress(ValueError):
        raw = _b64url_decode(signature_b64)
    if len(raw) != 2 * _P256_BYTES:
        raise TokenVerifierError("token signature verification failed")
    der = encode_dss_signature(
        int.from_bytes(raw[:_P256_BYTES], "big"), int.from_bytes(raw[_P256_BYTES:], "big")
    )
    try:
        key.verify(der, signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise TokenVerifierError("token signature verification failed") from exc


def _timely_claims(payload_b64: str, *, at: dt.datetime) -> dict[str, Any]:
    """The claims of a verified payload, if ``exp`` and ``nbf`` admit ``at``.

    Raises:
        TokenVerifierError: not a JSON object, no numeric ``exp``, expired, not yet valid.
    """
    claims: Any = None
    with contextlib.suppress(ValueError):
        claims = jsoncodec.loads(_b64url_decode(payload_b64))
    if not isinstance(claims, dict):
        raise TokenVerifierError("token signature verification failed")
    _check_window(claims, at=at)
    return claims


def _check_window(claims: Mapping[str, Any], *, at: dt.datetime) -> None:
    """Refuse claims whose numeric ``exp`` (with leeway) has passed or ``nbf`` has not.

    Raises:
        TokenVerifierError: no numeric ``exp``, expired, or not yet valid.
    """
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise TokenVerifierError("token has no valid exp claim")
    now = at.timestamp()
    if now > exp + EXP_LEEWAY_S:
        raise TokenVerifierError("token has expired")
    nbf = claims.get("nbf")
    if nbf is not None and (
        isinstance(nbf, bool) or not isinstance(nbf, int | float) or now < nbf - EXP_LEEWAY_S
    ):
        raise TokenVerifierError("token is not yet valid")


def _check_key_type(key: Any, alg: str) -> None:
    kty, crv = _ALGORITHMS[alg]
    if kty == "EC":
        ok = isinstance(key, ec.EllipticCurvePublicKey) and (
            (crv == "P-256" and isinstance(key.curve, ec.SECP256R1))
            or (crv == "P-384" and isinstance(key.curve, ec.SECP384R1))
        )
    elif kty == "RSA":
        ok = isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    else:
        ok = isinstance(key, ed25519.Ed25519PublicKey)
    if not ok:
        raise TokenVerifierError(f"token key does not fit algorithm {alg}")


def _decode_cert(entry: Any) -> x509.Certificate:
    if not isinstance(entry, str):
        raise TokenVerifierError("x5c entry is not a string")
    padded = entry + "=" * (-len(entry) % 4)
    try:
        # The reference accepts standard and URL-safe base64 in x5c.
        der = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise TokenVerifierError("x5c entry is not a DER certificate") from exc


def _valid_at(cert: x509.Certificate, at: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _verify_x5c(
    x5c: Sequence[Any], anchors: Iterable[x509.Certificate], *, at: dt.datetime
) -> x509.Certificate:
    """Verify a leaf-first chain to one of ``anchors`` at ``at``; return the leaf.

    The chain may be complete (ending in an anchor), or end in a certificate issued by
    an anchor, or the anchors may hold intermediates (partial chains), as the
    reference's OpenSSL store allows. Every certificate must be valid at ``at``; every
    issuer must be a CA. Intermediates may appear in any order.
    """
    chain = [_decode_cert(entry) for entry in x5c[:10]]
    anchor_list = list(anchors)
    leaf = chain[0]
    pool = chain[1:]
    current = leaf
    for _ in range(len(chain) + 1):
        if not _valid_at(current, at):
            raise TokenVerifierError("token certificate chain is not valid at this time")
        for anchor in anchor_list:
            if current == anchor or (
                _is_ca(anchor) and _valid_at(anchor, at) and _issued_by(current, anchor)
            ):
                return leaf
        parent = next((c for c in pool if _is_ca(c) and _issued_by(current, c)), None)
        if parent is None:
            break
        pool.remove(parent)
        current = parent
    raise TokenVerifierError("token certificate chain does not lead to a trusted certificate")


def resolve_pointer(doc: Any, pointer: str) -> Any:
    """Resolve an RFC 6901 JSON pointer; ``None`` when it does not exist."""
    if pointer == "":
        return doc
    if not pointer.startswith("/"):
        return None
    current = doc
    for raw in pointer[1:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(current, dict):
            if part not in current:
                return None
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return None
    return current
