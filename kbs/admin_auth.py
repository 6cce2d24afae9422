# SPDX-License-Identifier: Apache-2.0
"""Authentication and authorisation of admin requests, in Trustee's ``[admin]`` modes.

* ``DenyAll`` — every admin request is refused. **Our default when ``[admin]`` is absent**
  (the reference defaults to allow-all; see docs/compatibility.md).
* ``InsecureAllowAll`` — every admin request is allowed (logged as insecure).
* ``AuthenticatedAuthorization`` — ``Authorization: Bearer <JWT>`` verified against the
  configured identity providers (EdDSA, ES256/384, RS256/384/512, PS256/384); ``iss`` and
  ``aud`` checked where configured, ``exp`` required; roles from the ``role`` claim; then
  the first regex ACL entry for one of the roles that matches the request path (with its
  query string) allows the call.
* Older forms: ``auth_public_key`` + ``insecure_api`` (<= v0.15, any valid EdDSA token)
  and ``type = "Simple"`` personas (v0.16-v0.20, role = persona id).

Our additions to ``AuthenticatedAuthorization`` (docs/configuration.md, docs/admin.md):

* identity providers by JWKS URI or OpenID Connect discovery are **key sources** that are
  fetched with a timeout, cached, refreshed in the background every ``jwks_refresh_s``,
  and refreshed at once (at most every ``jwks_min_refresh_interval_s``) when a token
  names a ``kid`` the cache does not hold, so a key rotation at the provider is picked up
  without a restart. A provider that cannot be reached keeps its last keys;
* several providers: a token is tried against each; a signature that verifies but an
  ``iss`` or ``aud`` that does not match moves on to the next provider, as in Trustee;
* roles from a configurable claim (``role_claim``): a string or a list of strings, by
  name (``roles``, ``groups``) or JSON pointer (``/realm_access/roles``);
* configurable clock skew (``clock_skew_s``);
* ``grants`` (kbs/scopes.py): actions on resource path patterns, checked by the routes
  through :attr:`AdminIdentity.permissions` on top of the regex ACL.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlparse

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from kbs.clock import monotonic
from kbs.errors import AdminAuthError
from kbs.scopes import ALLOW_ALL, Grant, Grants, PathPattern, Permissions
from kbs.settings import AdminSettings, BearerJwtSettings, IdentityProviderSettings
from kbs.tokens import resolve_pointer
from kbs.uris import read_uri

_logger = logging.getLogger(__name__)

__all__ = [
    "AdminAuthorizer",
    "AdminIdentity",
    "BearerJwtAuthorizer",
    "JwksKeySource",
    "StaticAuthorizer",
    "StaticKeySource",
    "build_admin_authorizer",
]

#: Default leeway on ``exp``/``nbf`` of admin tokens, seconds (the reference's JWT default).
ADMIN_TOKEN_LEEWAY_S: Final = 60
#: Largest admin token accepted.
MAX_ADMIN_TOKEN_BYTES: Final = 64 * 1024
#: Largest JWKS or discovery document accepted.
MAX_KEY_DOCUMENT_BYTES: Final = 1024 * 1024
#: Most keys taken from one JWKS.
MAX_JWKS_KEYS: Final = 100
#: Most roles taken from a token.
MAX_ROLES: Final = 64
_LOOPBACK: Final = ("127.0.0.1", "localhost", "::1")

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
    """Who made an admin request (for logs and the audit trail), and what it may do."""

    subject: str
    role: str | None
    issuer: str | None = None
    roles: tuple[str, ...] = ()
    permissions: Permissions = field(default=ALLOW_ALL, compare=False)

    @property
    def actor(self) -> str:
        """``subject`` qualified by the issuer, for audit records."""
        return f"{self.subject}@{self.issuer}" if self.issuer else self.subject


class AdminAuthorizer(Protocol):
    """Decides whether an admin request may proceed."""

    def authorize(
        self, *, uri: str, authorization: str | None, endpoint: str, at: dt.datetime
    ) -> AdminIdentity:
        """Authenticate and authorise one request with the keys at hand.

        Args:
            uri: the request path plus query string, as the ACL regexes see it.
            authorization: the ``Authorization`` header, if any.
            endpoint: the admin endpoint's name, for error messages.
            at: the request's instant (token expiry is judged at it).

        Raises:
            AdminAuthError: the request is not allowed.
        """
        ...

    async def authorize_async(
        self, *, uri: str, authorization: str | None, endpoint: str, at: dt.datetime
    ) -> AdminIdentity:
        """Like :meth:`authorize`, fetching provider keys first when a ``kid`` is unknown.

        Raises:
            AdminAuthError: the request is not allowed.
        """
        ...

    async def start(self) -> None:
        """Load remote keys and start refreshing them (called once by the app)."""
        ...

    async def aclose(self) -> None:
        """Stop refreshing and release connections."""
        ...


class _NoLifecycle:
    async def start(self) -> None:
        """Nothing to load."""

    async def aclose(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True, slots=True)
class StaticAuthorizer(_NoLifecycle):
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

    async def authorize_async(
        self, *, uri: str, authorization: str | None, endpoint: str, at: dt.datetime
    ) -> AdminIdentity:
        """Allow or deny without looking at the request."""
        return self.authorize(uri=uri, authorization=authorization, endpoint=endpoint, at=at)


# --------------------------------------------------------------------------- key sources


class _UnknownKeyIdError(Exception):
    """No provider holds the token's ``kid`` (a refresh may help)."""


class KeySource(Protocol):
    """Verification keys of one identity provider."""

    def keys_for(self, kid: str | None) -> tuple[Any, ...] | None:
        """Keys to try for a token with ``kid``; ``None`` when ``kid`` is unknown here."""
        ...

    async def refresh(self, *, force: bool = False) -> None:
        """Fetch the keys again (rate-limited unless ``force``); never raises."""
        ...

    def start(self) -> list[Awaitable[None]]:
        """Background work to run while the app is up."""
        ...

    async def aclose(self) -> None:
        """Stop any fetch in flight."""
        ...


@dataclass(frozen=True, slots=True)
class StaticKeySource:
    """PEM public keys read once (Trustee's ``public_key_uri``): ``kid`` is not used."""

    keys: tuple[Any, ...]

    def keys_for(self, kid: str | None) -> tuple[Any, ...] | None:
        """Every key, whatever the ``kid``."""
        del kid
        return self.keys

    async def refresh(self, *, force: bool = False) -> None:
        """PEM keys are configuration: nothing to refresh."""
        del force

    def start(self) -> list[Awaitable[None]]:
        """Nothing runs in the background."""
        return []

    async def aclose(self) -> None:
        """Nothing to stop."""


class JwksKeySource:
    """A JWKS (directly, or through OpenID Connect discovery), cached and refreshed.

    Keys are indexed by ``kid``. The cache is replaced as a whole after a successful
    fetch; a failed fetch keeps the previous keys (and is logged), so an identity
    provider outage does not lock admins out until it outlasts a key rotation.
    """

    def __init__(
        self,
        *,
        jwks_uri: str | None,
        discovery_uri: str | None,
        expected_issuer: str | None,
        http: httpx.AsyncClient,
        timeout_s: float,
        refresh_s: float,
        min_refresh_interval_s: float,
        now: Callable[[], float] = monotonic,
    ) -> None:
        """Describe where the keys come from; nothing is fetched yet (see :meth:`refresh`)."""
        if not jwks_uri and not discovery_uri:
            raise ValueError("a JWKS key source needs jwks_uri or discovery_uri")
        self.jwks_uri = jwks_uri
        self.discovery_uri = discovery_uri
        self._expected_issuer = expected_issuer
        self._http = http
        self._timeout_s = timeout_s
        self._refresh_s = refresh_s
        self._min_interval_s = min_refresh_interval_s
        self._now = now
        self._by_kid: dict[str, tuple[Any, ...]] = {}
        self._without_kid: tuple[Any, ...] = ()
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self.fetches = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        """Name the source and how many keys it holds."""
        where = self.discovery_uri or self.jwks_uri
        return f"JwksKeySource({where}, keys={len(self._by_kid) + len(self._without_kid)})"

    def keys_for(self, kid: str | None) -> tuple[Any, ...] | None:
        """The key(s) with ``kid``; every key for a token without ``kid``."""
        if kid is None:
            return tuple(k for keys in self._by_kid.values() for k in keys) + self._without_kid
        found = self._by_kid.get(kid)
        if found is not None:
            return found
        return None if not self._without_kid else self._without_kid

    async def refresh(self, *, force: bool = False) -> None:
        """Fetch the key set again; concurrent callers share one fetch.

        Without ``force``, a fetch is skipped when the last one started less than
        ``jwks_min_refresh_interval_s`` ago (tokens with random ``kid`` values must not
        make us hammer the provider).
        """
        if self._inflight is not None and not self._inflight.done():
            await asyncio.shield(self._inflight)
            return
        now = self._now()
        if (
            not force
            and self._last_attempt is not None
            and now - self._last_attempt < self._min_interval_s
        ):
            return
        self._last_attempt = now
        self._inflight = asyncio.create_task(self._fetch_and_swap())
        await asyncio.shield(self._inflight)

    def start(self) -> list[Awaitable[None]]:
        """The periodic refresh loop."""
        return [self._refresh_forever()]

    async def aclose(self) -> None:
        """Cancel a fetch in flight (at shutdown)."""
        task, self._inflight = self._inflight, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh(force=True)

    async def _fetch_and_swap(self) -> None:
        self.fetches += 1
        try:
            async with asyncio.timeout(self._timeout_s * 2):
                by_kid, without_kid = await self._fetch()
        except (ValueError, OSError, httpx.HTTPError, TimeoutError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            _logger.warning(
                "admin identity provider %s: keys not refreshed (%s); keeping %d cached key(s)",
                self.discovery_uri or self.jwks_uri,
                self.last_error,
                len(self._by_kid) + len(self._without_kid),
            )
            return
        self._by_kid, self._without_kid = by_kid, without_kid
        self.last_error = None
        _logger.info(
            "admin identity provider %s: %d key(s) loaded",
            self.discovery_uri or self.jwks_uri,
            len(by_kid) + len(without_kid),
        )

    async def _fetch(self) -> tuple[dict[str, tuple[Any, ...]], tuple[Any, ...]]:
        # 1. OIDC discovery (ours): the document names the JWKS.
        if self.discovery_uri:
            jwks_uri = await self._jwks_uri_from_discovery(self.discovery_uri)
            return _parse_jwks(await self._get_json(jwks_uri), jwks_uri)
        # 2. Trustee's jwk_set_uri: a JWKS, or a discovery document to follow, or (when
        #    neither can be read) <uri>/.well-known/openid-configuration.
        assert self.jwks_uri is not None
        uri = self.jwks_uri
        try:
            doc = await self._get_json(uri)
        except (ValueError, httpx.HTTPError):
            if not uri.startswith(("https://", "http://")):
                raise
            doc = None
        if isinstance(doc, dict) and "keys" not in doc and "jwks_uri" in doc:
            target = await self._jwks_uri_from_discovery(uri)
            return _parse_jwks(await self._get_json(target), target)
        if isinstance(doc, dict) and isinstance(doc.get("keys"), list):
            return _parse_jwks(doc, uri)
        if not uri.startswith(("https://", "http://")):
            raise ValueError(f"{uri} is not a JWK set")
        target = await self._jwks_uri_from_discovery(
            uri.rstrip("/") + "/.well-known/openid-configuration"
        )
        return _parse_jwks(await self._get_json(target), target)

    async def _get_json(self, uri: str) -> Any:
        return json.loads(await self._get(uri))

    async def _jwks_uri_from_discovery(self, uri: str) -> str:
        doc = await self._get_json(uri)
        if not isinstance(doc, dict) or not isinstance(doc.get("jwks_uri"), str):
            raise ValueError(f"{uri} is not an OpenID configuration (no jwks_uri)")
        # OpenID Connect Discovery 1.0, section 4.3: the issuer must be the expected one.
        if self._expected_issuer is not None and doc.get("issuer") != self._expected_issuer:
            raise ValueError(f"{uri} names another issuer than {self._expected_issuer!r}")
        return str(doc["jwks_uri"])

    async def _get(self, uri: str) -> bytes:
        parsed = urlparse(uri)
        if parsed.scheme in ("https", "http"):
            if parsed.scheme == "http" and parsed.hostname not in _LOOPBACK:
                raise ValueError(f"refusing to fetch keys over plain http from {parsed.hostname}")
            async with self._http.stream(
                "GET", uri, timeout=self._timeout_s, follow_redirects=False
            ) as response:
                response.raise_for_status()
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_KEY_DOCUMENT_BYTES:
                        raise ValueError(f"{uri} is too large")
                return bytes(body)
        if parsed.scheme in ("file", ""):
            path = Path(parsed.path if parsed.scheme == "file" else uri)
            data = await asyncio.to_thread(path.read_bytes)
            if len(data) > MAX_KEY_DOCUMENT_BYTES:
                raise ValueError(f"{uri} is too large")
            return data
        raise ValueError(f"unsupported URI scheme {parsed.scheme!r}")


def _parse_jwks(doc: Any, uri: str) -> tuple[dict[str, tuple[Any, ...]], tuple[Any, ...]]:
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError(f"{uri} is not a JWK set")
    by_kid: dict[str, list[Any]] = {}
    without_kid: list[Any] = []
    for entry in doc["keys"][:MAX_JWKS_KEYS]:
        if not isinstance(entry, dict) or entry.get("use") not in (None, "sig"):
            continue
        key = _key_from_jwk(entry)
        if key is None:
            continue
        kid = entry.get("kid")
        if isinstance(kid, str) and kid:
            by_kid.setdefault(kid, []).append(key)
        else:
            without_kid.append(key)
    return {k: tuple(v) for k, v in by_kid.items()}, tuple(without_kid)


def _key_from_jwk(entry: Mapping[str, Any]) -> Any:
    text = json.dumps(entry)
    kty = entry.get("kty")
    try:
        if kty == "EC":
            return ECAlgorithm.from_jwk(text)
        if kty == "RSA":
            key = RSAAlgorithm.from_jwk(text)
            return key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
        if kty == "OKP":
            return OKPAlgorithm.from_jwk(text)
    except (jwt.InvalidKeyError, ValueError, TypeError):
        _logger.warning("skipping a JWK that cannot be loaded (kty %s)", kty)
    return None


# --------------------------------------------------------------------------- bearer JWT


@dataclass(frozen=True, slots=True)
class _Provider:
    issuer: str | None
    audience: str | None
    source: KeySource
    role_claim: str = "role"


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
        grants: Grants | None = None,
        leeway_s: int = ADMIN_TOKEN_LEEWAY_S,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        """Build from resolved providers and compiled ACLs.

        ``any_role`` allows every authenticated caller (the <= v0.15 form);
        ``role_required`` demands a role claim (v0.21); ``grants`` scopes admins by
        role (ours); ``http`` is closed by :meth:`aclose`.
        """
        if not providers:
            raise ValueError("at least one identity provider is required")
        self._providers = tuple(providers)
        self._acls = tuple(acls)
        self._role_required = role_required
        self._any_role = any_role
        self._grants = grants or None
        self._leeway_s = leeway_s
        self._http = http
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def providers(self) -> tuple[_Provider, ...]:
        """The identity providers, in the order tokens are tried."""
        return self._providers

    async def start(self) -> None:
        """Fetch every remote key set once (failures are logged), then refresh them."""
        await asyncio.gather(*(p.source.refresh(force=True) for p in self._providers))
        for provider in self._providers:
            for work in provider.source.start():
                self._tasks.append(asyncio.ensure_future(work))

    async def aclose(self) -> None:
        """Stop the refresh loops and close the HTTP client."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for provider in self._providers:
            await provider.source.aclose()
        if self._http is not None:
            await self._http.aclose()

    def authorize(
        self, *, uri: str, authorization: str | None, endpoint: str, at: dt.datetime
    ) -> AdminIdentity:
        """Verify the Bearer token with cached keys and match the ACL.

        A token whose ``kid`` no provider knows is refused, and a key refresh is
        started for next time (use :meth:`authorize_async` to wait for it).

        Raises:
            AdminAuthError: missing/invalid token, or no ACL entry allows ``uri``.
        """
        try:
            return self._authorize(uri=uri, authorization=authorization, endpoint=endpoint, at=at)
        except _UnknownKeyIdError:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule
                loop = asyncio.get_running_loop()
                for provider in self._providers:
                    task = loop.create_task(provider.source.refresh())
                    task.add_done_callback(_drop_result)
            raise AdminAuthError(
                f"admin access denied for endpoint {endpoint}: token key id is not known"
            ) from None

    async def authorize_async(
        self, *, uri: str, authorization: str | None, endpoint: str, at: dt.datetime
    ) -> AdminIdentity:
        """Verify the Bearer token, fetching keys again once if its ``kid`` is unknown.

        Raises:
            AdminAuthError: missing/invalid token, or no ACL entry allows ``uri``.
        """
        try:
            return self._authorize(uri=uri, authorization=authorization, endpoint=endpoint, at=at)
        except _UnknownKeyIdError:
            _logger.info("admin token names an unknown key id; refreshing identity providers")
            await asyncio.gather(*(p.source.refresh() for p in self._providers))
        try:
            return self._authorize(uri=uri, authorization=authorization, endpoint=endpoint, at=at)
        except _UnknownKeyIdError:
            raise AdminAuthError(
                f"admin access denied for endpoint {endpoint}: token key id is not known"
            ) from None

    def _authorize(
        self, *, uri: str, authorization: str | None, endpoint: str, at: dt.datetime
    ) -> AdminIdentity:
        prefix = f"admin access denied for endpoint {endpoint}"
        token = _bearer(authorization)
        if token is None:
            raise AdminAuthError(f"{prefix}: no Bearer token")
        claims, provider = self._verify(token, at=at, prefix=prefix)
        roles = _roles(claims, provider.role_claim)
        if self._role_required and not roles:
            raise AdminAuthError(f"{prefix}: token has no {provider.role_claim} claim")
        issuer = claims.get("iss") if isinstance(claims.get("iss"), str) else None
        subject = claims.get("sub") if isinstance(claims.get("sub"), str) else None
        role_text = ",".join(roles)
        if self._any_role:
            return AdminIdentity(
                subject=subject or role_text or "admin",
                role=roles[0] if roles else None,
                issuer=issuer,
                roles=roles,
            )
        # 1. Trustee's regex ACL (skipped when only grants are configured).
        acl_applies = bool(self._acls) or self._grants is None
        if acl_applies and not any(
            acl.role in roles and acl.pattern.fullmatch(uri) is not None for acl in self._acls
        ):
            raise AdminAuthError(f"{prefix}: role {role_text} not allowed for path {uri}")
        # 2. Our grants: a role without any grant is refused outright; the routes check
        #    each action on each resource against the permissions.
        permissions = ALLOW_ALL
        if self._grants is not None:
            if not self._grants.knows_any(roles):
                raise AdminAuthError(f"{prefix}: role {role_text} has no grants")
            permissions = self._grants.for_roles(roles)
        return AdminIdentity(
            subject=subject or role_text,
            role=roles[0] if roles else None,
            issuer=issuer,
            roles=roles,
            permissions=permissions,
        )

    def _verify(
        self, token: str, *, at: dt.datetime, prefix: str
    ) -> tuple[dict[str, Any], _Provider]:
        # 1. Size and header: an algorithm we accept.
        alg, kid = _header(token, prefix)
        # 2. Each provider in turn: a key that verifies the signature, then its iss/aud.
        #    An iss/aud mismatch moves on to the next provider (Trustee does the same).
        mismatch: str | None = None
        unknown_kid = False
        for provider in self._providers:
            keys = provider.source.keys_for(kid)
            if keys is None:
                unknown_kid = True
                continue
            for key in keys:
                claims = _decode(token, key, alg, prefix)
                if claims is None:
                    continue
                # 3. Time, with the configured leeway.
                self._check_times(claims, at=at, prefix=prefix)
                problem = _issuer_audience_problem(claims, provider)
                if problem is None:
                    return claims, provider
                mismatch = mismatch or problem
                break  # this provider's key verified: its iss/aud decide for it
        if mismatch is not None:
            raise AdminAuthError(f"{prefix}: {mismatch}")
        if unknown_kid:
            raise _UnknownKeyIdError
        raise AdminAuthError(f"{prefix}: token not signed by a trusted identity provider")

    def _check_times(self, claims: Mapping[str, Any], *, at: dt.datetime, prefix: str) -> None:
        now = at.timestamp()
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise AdminAuthError(f"{prefix}: token has no exp claim")
        if now > exp + self._leeway_s:
            raise AdminAuthError(f"{prefix}: token has expired")
        nbf = claims.get("nbf")
        if (
            isinstance(nbf, int | float)
            and not isinstance(nbf, bool)
            and now + self._leeway_s < nbf
        ):
            raise AdminAuthError(f"{prefix}: token is not valid yet")


def _header(token: str, prefix: str) -> tuple[str, str | None]:
    if len(token) > MAX_ADMIN_TOKEN_BYTES:
        raise AdminAuthError(f"{prefix}: token too large")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise AdminAuthError(f"{prefix}: malformed token") from exc
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _ALG_KEY_TYPES:
        raise AdminAuthError(f"{prefix}: token algorithm {alg!r} is not accepted")
    kid = header.get("kid")
    return alg, kid if isinstance(kid, str) else None


def _decode(token: str, key: Any, alg: str, prefix: str) -> dict[str, Any] | None:
    """The claims if ``key`` verifies the signature, ``None`` if it does not."""
    if not _key_fits(key, alg):
        return None
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=[alg],
            options={
                "verify_signature": True,
                "verify_exp": False,  # judged at the request's instant, with our leeway
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,  # checked per provider
                "verify_iss": False,
            },
        )
    except jwt.InvalidSignatureError:
        return None
    except jwt.PyJWTError as exc:
        raise AdminAuthError(f"{prefix}: malformed token") from exc
    return claims


def _drop_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # refresh() never raises; read it so asyncio does not warn


def _issuer_audience_problem(claims: Mapping[str, Any], provider: _Provider) -> str | None:
    if provider.issuer is not None and claims.get("iss") != provider.issuer:
        return "token issuer is not accepted"
    if provider.audience is not None:
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if provider.audience not in audiences:
            return "token audience is not accepted"
    return None


def _roles(claims: Mapping[str, Any], role_claim: str) -> tuple[str, ...]:
    """Roles from ``role_claim``: a claim name, else (``/...``) a JSON pointer."""
    if role_claim in claims:
        value = claims[role_claim]
    elif role_claim.startswith("/"):
        try:
            value = resolve_pointer(claims, role_claim)
        except (KeyError, IndexError, TypeError, ValueError):
            value = None
    else:
        value = None
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list):
        return tuple(dict.fromkeys(v for v in value if isinstance(v, str) and v))[:MAX_ROLES]
    return ()


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


# --------------------------------------------------------------------------- building


def _load_public_keys_pem(data: bytes) -> list[Any]:
    blocks = re.findall(
        rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", data, flags=re.DOTALL
    )
    keys = [serialization.load_pem_public_key(block) for block in blocks]
    if not keys:
        raise ValueError("no PEM public key found")
    return keys


def _resolve_provider(
    idp: IdentityProviderSettings,
    bearer: BearerJwtSettings,
    http: httpx.AsyncClient,
) -> list[_Provider]:
    role_claim = idp.role_claim or bearer.role_claim
    providers: list[_Provider] = []
    if idp.public_key_uri:
        keys = tuple(_load_public_keys_pem(read_uri(idp.public_key_uri)))
        providers.append(_Provider(idp.issuer, idp.audience, StaticKeySource(keys), role_claim))
    if idp.jwk_set_uri or idp.openid_configuration_uri:
        source = JwksKeySource(
            jwks_uri=idp.jwk_set_uri,
            discovery_uri=idp.openid_configuration_uri,
            expected_issuer=idp.issuer,
            http=http,
            timeout_s=bearer.fetch_timeout_s,
            refresh_s=bearer.jwks_refresh_s,
            min_refresh_interval_s=bearer.jwks_min_refresh_interval_s,
        )
        providers.append(_Provider(idp.issuer, idp.audience, source, role_claim))
    return providers


def _grants(settings: AdminSettings) -> Grants | None:
    entries = settings.authorization.grants if settings.authorization else []
    if not entries:
        return None
    return Grants(
        [
            Grant(
                role=entry.role,
                actions=frozenset(entry.actions),
                patterns=tuple(PathPattern.parse(text) for text in entry.resources),
            )
            for entry in entries
        ]
    )


def build_admin_authorizer(settings: AdminSettings | None) -> AdminAuthorizer:
    """Build the authorizer ``[admin]`` describes (deny-all when absent).

    PEM keys are read here; JWKS and discovery documents are fetched by ``start()``.

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
            [_Provider(None, None, StaticKeySource(keys))], [], role_required=False, any_role=True
        )
    return StaticAuthorizer(allow=False)


def _authenticated(settings: AdminSettings) -> AdminAuthorizer:
    assert settings.authentication is not None  # enforced by AdminSettings
    bearer = settings.authentication.bearer_jwt
    http = httpx.AsyncClient(
        timeout=httpx.Timeout(bearer.fetch_timeout_s),
        follow_redirects=False,
        trust_env=False,
    )
    providers = [
        provider
        for idp in bearer.identity_providers
        for provider in _resolve_provider(idp, bearer, http)
    ]
    acl_settings = settings.authorization.regex_acl.acls if settings.authorization else []
    acls = [_Acl(a.role, re.compile(a.allowed_endpoints)) for a in acl_settings]
    return BearerJwtAuthorizer(
        providers,
        acls,
        grants=_grants(settings),
        leeway_s=bearer.clock_skew_s,
        http=http,
    )


def _personas(settings: AdminSettings) -> AdminAuthorizer:
    # Simple personas: each persona's key signs tokens; the persona id is its role.
    roles = {r.id: r.allowed_endpoints for r in settings.roles}
    providers = [
        _Provider(
            None,
            None,
            StaticKeySource(tuple(_load_public_keys_pem(p.public_key_path.read_bytes()))),
        )
        for p in settings.personas
    ]
    acls = [_Acl(p.id, re.compile(roles.get(p.id, "^/kbs/.*$"))) for p in settings.personas]
    return _PersonaAuthorizer(providers, [p.id for p in settings.personas], acls)


class _PersonaAuthorizer(_NoLifecycle):
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
                return AdminIdentity(subject=persona_id, role=persona_id, roles=(persona_id,))
            raise AdminAuthError(f"{prefix}: role {persona_id} not allowed for path {uri}")
        raise AdminAuthError(f"{prefix}: token not signed by a known persona")

    async def authorize_async(
        self, *, uri: str, authorization: str | None, endpoint: str, at: dt.datetime
    ) -> AdminIdentity:
        return self.authorize(uri=uri, authorization=authorization, endpoint=endpoint, at=at)
