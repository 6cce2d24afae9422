# SPDX-License-Identifier: Apache-2.0
"""Authentication and authorisation of admin requests, in Trustee's ``[admin]`` modes.

* ``DenyAll`` — every admin request is refused. **Our default when ``[admin]`` is absent**
  (the reference defaults to allow-all; see docs/compatibility.md).
* ``InsecureAllowAll`` — every admin request is allowed (logged as insecure).
* ``AuthenticatedAuthorization`` — ``Authorization: Bearer <JWT>`` verified against the
  configured identity providers' public keys (EdDSA, ES256/384, RS256/384/512); ``iss`` and
  ``aud`` checked where configured, ``exp`` required, a string ``role`` claim required;
  then the first regex ACL entry for that role that matches the request path (with its
  query string) allows the call.
* Older forms: ``auth_public_key`` + ``insecure_api`` (<= v0.15, any valid EdDSA token)
  and ``type = "Simple"`` personas (v0.16-v0.20, role = persona id).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from kbs.errors import AdminAuthError
from kbs.settings import AdminSettings, IdentityProviderSettings
from kbs.uris import read_uri

_logger = logging.getLogger(__name__)

__all__ = [
    "AdminAuthorizer",
    "AdminIdentity",
    "BearerJwtAuthorizer",
    "StaticAuthorizer",
    "build_admin_authorizer",
]

#: Leeway on ``exp``/``nbf`` of admin tokens, seconds (the reference's JWT default).
ADMIN_TOKEN_LEEWAY_S: Final = 60
#: Largest admin token accepted.
MAX_ADMIN_TOKEN_BYTES: Final = 64 * 1024

_ALG_KEY_TYPES: Final = {
    "EdDSA": ed25519.Ed25519PublicKey,
    "ES256": ec.EllipticCurvePublicKey,
    "ES384": ec.EllipticCurvePublicKey,
    "RS256": rsa.RSAPublicKey,
    "RS384": rsa.RSAPublicKey,
    "RS512": rsa.RSAPublicKey,
    "PS256": rsa.RSAPublicKey,
    "PS384": rsa.RSAPublicKey,
}
_EC_CURVES: Final = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1}


@dataclass(frozen=True, slots=True)
class AdminIdentity:
    """Who made an admin request (for logs and the audit trail)."""

    subject: str
    role: str | None
    issuer: str | None = None


class AdminAuthorizer(Protocol):
    """Decides whether an admin request may proceed."""

    def authorize(
        self, *, uri: str, authorization: str | None, endpoint: str, at: dt.datetime
    ) -> AdminIdentity:
        """Authenticate and authorise one request.

        Args:
            uri: the request path plus query string, as the ACL regexes see it.
            authorization: the ``Authorization`` header, if any.
            endpoint: the admin endpoint's name, for error messages.
            at: the request's instant (token expiry is judged at it).

        Raises:
            AdminAuthError: the request is not allowed.
        """
        ...


@dataclass(frozen=True, slots=True)
class StaticAuthorizer:
    """Allows or denies every request."""

    allow: bool

    def authorize(
        self, *, uri: str, authorization: str | None, endpoint: str, at: dt.datetime
    ) -> AdminIdentity:
        """Allow or deny without looking at the request."""
        del uri, authorization, at
        if not self.allow:
            raise AdminAuthError(
                f"admin access denied for endpoint {endpoint}: admin API is disabled"
            )
        return AdminIdentity(subject="anonymous", role=None)


@dataclass(frozen=True, slots=True)
class _Provider:
    issuer: str | None
    audience: str | None
    keys: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class _Acl:
    role: str
    pattern: re.Pattern[str]


class BearerJwtAuthorizer:
    """``AuthenticatedAuthorization``: Bearer JWTs from identity providers + regex ACLs."""

    def __init__(
        self,
        providers: Sequence[_Provider],
        acls: Sequence[_Acl],
        *,
        role_required: bool = True,
        any_role: bool = False,
    ) -> None:
        """Build from resolved providers and compiled ACLs.

        ``any_role`` allows every authenticated caller (the <= v0.15 form);
        ``role_required`` demands a ``role`` claim (v0.21).
        """
        if not providers:
            raise ValueError("at least one identity provider is required")
        self._providers = tuple(providers)
        self._acls = tuple(acls)
        self._role_required = role_required
        self._any_role = any_role

    def authorize(
        self, *, uri: str, authorization: str | None, endpoint: str, at: dt.datetime
    ) -> AdminIdentity:
        """Verify the Bearer token and match the ACL.

        Raises:
            AdminAuthError: missing/invalid token, or no ACL entry allows ``uri``.
        """
        prefix = f"admin access denied for endpoint {endpoint}"
        token = _bearer(authorization)
        if token is None:
            raise AdminAuthError(f"{prefix}: no Bearer token")
        claims = self._verify(token, at=at, prefix=prefix)
        role = claims.get("role")
        if self._role_required and not isinstance(role, str):
            raise AdminAuthError(f"{prefix}: token has no role claim")
        subject = claims.get("sub") if isinstance(claims.get("sub"), str) else None
        identity = AdminIdentity(
            subject=subject or (role if isinstance(role, str) else "admin"),
            role=role if isinstance(role, str) else None,
            issuer=claims.get("iss") if isinstance(claims.get("iss"), str) else None,
        )
        if self._any_role:
            return identity
        for acl in self._acls:
            if acl.role == role and acl.pattern.fullmatch(uri):
                return identity
        raise AdminAuthError(f"{prefix}: role {role} not allowed for path {uri}")

    def _verify(self, token: str, *, at: dt.datetime, prefix: str) -> dict[str, Any]:
        if len(token) > MAX_ADMIN_TOKEN_BYTES:
            raise AdminAuthError(f"{prefix}: token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AdminAuthError(f"{prefix}: malformed token") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in _ALG_KEY_TYPES:
            raise AdminAuthError(f"{prefix}: token algorithm {alg!r} is not accepted")
        for provider in self._providers:
            for key in provider.keys:
                if not _key_fits(key, alg):
                    continue
                try:
                    claims: dict[str, Any] = jwt.decode(
                        token,
                        key=key,
                        algorithms=[alg],
                        options={
                            "verify_signature": True,
                            "verify_exp": False,  # judged below at the request's instant
                            "verify_nbf": False,
                            "verify_iat": False,
                            "verify_aud": False,  # checked below, per provider
                            "verify_iss": False,
                        },
                    )
                except jwt.InvalidSignatureError:
                    continue
                except jwt.PyJWTError as exc:
                    raise AdminAuthError(f"{prefix}: malformed token") from exc
                _check_claims(claims, provider, at=at, prefix=prefix)
                return claims
        raise AdminAuthError(f"{prefix}: token not signed by a trusted identity provider")


def _check_claims(
    claims: Mapping[str, Any], provider: _Provider, *, at: dt.datetime, prefix: str
) -> None:
    now = at.timestamp()
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise AdminAuthError(f"{prefix}: token has no exp claim")
    if now > exp + ADMIN_TOKEN_LEEWAY_S:
        raise AdminAuthError(f"{prefix}: token has expired")
    nbf = claims.get("nbf")
    if (
        isinstance(nbf, int | float)
        and not isinstance(nbf, bool)
        and now + ADMIN_TOKEN_LEEWAY_S < nbf
    ):
        raise AdminAuthError(f"{prefix}: token is not valid yet")
    if provider.issuer is not None and claims.get("iss") != provider.issuer:
        raise AdminAuthError(f"{prefix}: token issuer is not accepted")
    if provider.audience is not None:
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if provider.audience not in audiences:
            raise AdminAuthError(f"{prefix}: token audience is not accepted")


def _key_fits(key: Any, alg: str) -> bool:
    if not isinstance(key, _ALG_KEY_TYPES[alg]):
        return False
    curve = _EC_CURVES.get(alg)
    return curve is None or (
        isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, curve)
    )


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


# --------------------------------------------------------------------------- key loading


def _load_public_keys_pem(data: bytes) -> list[Any]:
    blocks = re.findall(
        rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", data, flags=re.DOTALL
    )
    keys = [serialization.load_pem_public_key(block) for block in blocks]
    if not keys:
        raise ValueError("no PEM public key found")
    return keys


def _load_jwks(data: bytes, uri: str) -> list[Any]:
    doc = json.loads(data)
    if isinstance(doc, dict) and "jwks_uri" in doc and "keys" not in doc:
        # An OpenID discovery document: follow it to the key set.
        return _load_jwks(read_uri(str(doc["jwks_uri"])), str(doc["jwks_uri"]))
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError(f"{uri} is not a JWK set")
    keys: list[Any] = []
    for entry in doc["keys"]:
        text = json.dumps(entry)
        kty = entry.get("kty")
        if kty == "EC":
            keys.append(ECAlgorithm.from_jwk(text))
        elif kty == "RSA":
            keys.append(RSAAlgorithm.from_jwk(text))
        elif kty == "OKP":
            keys.append(OKPAlgorithm.from_jwk(text))
    return keys


def _resolve_provider(idp: IdentityProviderSettings) -> _Provider:
    keys: list[Any] = []
    if idp.public_key_uri:
        keys.extend(_load_public_keys_pem(read_uri(idp.public_key_uri)))
    if idp.jwk_set_uri:
        uri = idp.jwk_set_uri
        try:
            keys.extend(_load_jwks(read_uri(uri), uri))
        except (ValueError, httpx.HTTPError):
            if not uri.startswith(("https://", "http://")):
                raise
            discovery = uri.rstrip("/") + "/.well-known/openid-configuration"
            keys.extend(_load_jwks(read_uri(discovery), discovery))
    return _Provider(issuer=idp.issuer, audience=idp.audience, keys=tuple(keys))


def build_admin_authorizer(settings: AdminSettings | None) -> AdminAuthorizer:
    """Build the authorizer ``[admin]`` describes (deny-all when absent).

    Raises:
        ValueError: a key cannot be loaded or a regex does not compile.
        OSError: a key file cannot be read.
    """
    if settings is None:
        return StaticAuthorizer(allow=False)
    mode = settings.authorization_mode or settings.type
    if mode in ("DenyAll", "InsecureAllowAll"):
        return StaticAuthorizer(allow=mode == "InsecureAllowAll")
    if mode == "AuthenticatedAuthorization":
        return _authenticated(settings)
    if mode == "Simple":
        return _personas(settings)
    return _pre_v016(settings)


def _pre_v016(settings: AdminSettings) -> AdminAuthorizer:
    # <= v0.15: any token verified by auth_public_key; insecure_api allows everything.
    if settings.insecure_api:
        return StaticAuthorizer(allow=True)
    if settings.auth_public_key is not None:
        keys = tuple(_load_public_keys_pem(settings.auth_public_key.read_bytes()))
        return BearerJwtAuthorizer(
            [_Provider(None, None, keys)], [], role_required=False, any_role=True
        )
    return StaticAuthorizer(allow=False)


def _authenticated(settings: AdminSettings) -> AdminAuthorizer:
    assert settings.authentication is not None  # enforced by AdminSettings
    providers = [
        _resolve_provider(idp) for idp in settings.authentication.bearer_jwt.identity_providers
    ]
    acl_settings = settings.authorization.regex_acl.acls if settings.authorization else []
    acls = [_Acl(a.role, re.compile(a.allowed_endpoints)) for a in acl_settings]
    return BearerJwtAuthorizer(providers, acls)


def _personas(settings: AdminSettings) -> AdminAuthorizer:
    # Simple personas: each persona's key signs tokens; the persona id is its role.
    roles = {r.id: r.allowed_endpoints for r in settings.roles}
    providers = [
        _Provider(None, None, tuple(_load_public_keys_pem(p.public_key_path.read_bytes())))
        for p in settings.personas
    ]
    acls = [_Acl(p.id, re.compile(roles.get(p.id, "^/kbs/.*$"))) for p in settings.personas]
    return _PersonaAuthorizer(providers, [p.id for p in settings.personas], acls)


class _PersonaAuthorizer:
    """v0.16-v0.20 ``Simple``: the persona whose key verifies the token is its role."""

    def __init__(
        self, providers: Sequence[_Provider], persona_ids: Sequence[str], acls: Sequence[_Acl]
    ) -> None:
        self._pairs = list(zip(persona_ids, providers, strict=True))
        self._acls = {acl.role: acl for acl in acls}

    def authorize(
        self, *, uri: str, authorization: str | None, endpoint: str, at: dt.datetime
    ) -> AdminIdentity:
        prefix = f"admin access denied for endpoint {endpoint}"
        token = _bearer(authorization)
        if token is None:
            raise AdminAuthError(f"{prefix}: no Bearer token")
        for persona_id, provider in self._pairs:
            single = BearerJwtAuthorizer([provider], [], role_required=False, any_role=True)
            try:
                single.authorize(uri=uri, authorization=authorization, endpoint=endpoint, at=at)
            except AdminAuthError:
                continue
            acl = self._acls.get(persona_id)
            if acl is not None and acl.pattern.fullmatch(uri):
                return AdminIdentity(subject=persona_id, role=persona_id)
            raise AdminAuthError(f"{prefix}: role {persona_id} not allowed for path {uri}")
        raise AdminAuthError(f"{prefix}: token not signed by a known persona")
