# SPDX-License-Identifier: Apache-2.0
"""A Python client of the KBS protocol and admin API.

:class:`KbsClient` behaves as Trustee's guest client (``kbs_protocol``) does: it runs the
RCAR handshake (auth -> attest) with a TEE key it generated, keeps the session cookie,
re-runs the handshake and retries when a resource request answers 401, and decrypts
the JWE the server returns. :class:`AdminClient` drives the admin endpoints.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, Self
from urllib.parse import urlparse

import httpx
import jwt
import rfc8785

from kbs.client.tee_key import TeeKeyPair

_logger = logging.getLogger(__name__)

__all__ = [
    "AdminClient",
    "Attester",
    "KbsClient",
    "KbsClientError",
    "SampleAttester",
    "parse_resource_uri",
]

#: Protocol version this client speaks.
PROTOCOL_VERSION: Final = "0.4.0"
#: Resource GET attempts, re-running the handshake after a 401 (the reference's limit).
GET_RESOURCE_MAX_ATTEMPTS: Final = 3
#: Default HTTP timeout, seconds.
DEFAULT_TIMEOUT_S: Final = 30.0
#: Header in which the server names the version a resource write created.
VERSION_HEADER: Final = "X-Kbs-Resource-Version"


class KbsClientError(Exception):
    """The server refused a request; carries its status and error body."""

    def __init__(self, message: str, *, status: int | None = None, error_type: str = "") -> None:
        """Record the HTTP status and the KBS error type, if any."""
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class Attester(Protocol):
    """Produces evidence for a TEE, bound to ``report_data``."""

    tee: str

    async def evidence(self, report_data: bytes) -> Any:
        """Return the TEE's evidence JSON committing to ``report_data``."""
        ...


class SampleAttester:
    """The software-only ``sample`` TEE: it proves nothing (tests, development)."""

    tee = "sample"

    def __init__(self, svn: str = "1") -> None:
        """Claim security version ``svn``."""
        self.svn = svn

    async def evidence(self, report_data: bytes) -> Any:
        """``{"svn", "report_data"}`` with the digest in standard base64."""
        return {"svn": self.svn, "report_data": base64.b64encode(report_data).decode()}


class SampleDeviceAttester(SampleAttester):
    """The software-only ``sampledevice`` (a GPU-class additional device)."""

    tee = "sampledevice"


def parse_resource_uri(uri: str) -> str:
    """Return ``repo/type/tag`` from ``kbs:///repo/type/tag`` (or a bare path).

    Raises:
        ValueError: not a KBS resource URI with three path segments.
    """
    if "://" in uri:
        parsed = urlparse(uri)
        if parsed.scheme != "kbs":
            raise ValueError("resource URI must use the kbs:// scheme")
        path = parsed.path
    else:
        path = uri
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) != 3:  # noqa: PLR2004
        raise ValueError("resource URI must name <repository>/<type>/<tag>")
    return "/".join(parts)


def _canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON, as the reference client hashes runtime data."""
    return bytes(rfc8785.dumps(value))


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.is_success:
        return
    error_type = ""
    detail = response.text[:500]
    try:
        body = response.json()
        if isinstance(body, dict):
            error_type = str(body.get("type", ""))
            detail = str(body.get("detail", detail))
    except ValueError:
        pass
    variant = error_type.rsplit("/", 1)[-1]
    raise KbsClientError(
        f"{what} failed: HTTP {response.status_code} {variant}: {detail}",
        status=response.status_code,
        error_type=error_type,
    )


@dataclass(frozen=True, slots=True)
class Attestation:
    """The outcome of a handshake: the token and the key it vouches for."""

    token: str
    tee_key: TeeKeyPair


class KbsClient:
    """A guest-side client: attest, then fetch resources."""

    def __init__(
        self,
        url: str,
        *,
        attester: Attester,
        tee_key: TeeKeyPair | None = None,
        init_data: str | None = None,
        additional_attesters: Sequence[Attester] = (),
        http: httpx.AsyncClient | None = None,
        verify: bool | str = True,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        """Talk to the KBS at ``url`` (scheme://host[:port][/prefix]).

        Args:
            url: the KBS root URL (``/kbs/v0`` is appended).
            attester: produces the primary evidence.
            tee_key: the key secrets are wrapped to (default: a fresh EC P-256 key).
            init_data: an init-data TOML document to send with the attestation.
            additional_attesters: additional devices (e.g. ``sampledevice``).
            http: an httpx client to use (tests pass an ASGI transport).
            verify: TLS verification (True, False, or a CA bundle path).
            timeout: HTTP timeout, seconds.
        """
        self.base = url.rstrip("/") + "/kbs/v0"
        self.attester = attester
        self.tee_key = tee_key or TeeKeyPair.generate()
        self.init_data = init_data
        self.additional_attesters = tuple(additional_attesters)
        self._http = http or httpx.AsyncClient(verify=verify, timeout=timeout)
        self._owns_http = http is None
        self.token: str | None = None

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        """Use as an async context manager."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close on exit."""
        await self.aclose()

    async def attest(self) -> str:
        """Run the RCAR handshake and return the attestation token.

        Raises:
            KbsClientError: the server refused auth or attest.
        """
        request = {
            "version": PROTOCOL_VERSION,
            "tee": self.attester.tee,
            "extra-params": {"supported-hash-algorithms": ["sha256", "sha384", "sha512"]},
        }
        response = await self._http.post(f"{self.base}/auth", json=request)
        _raise_for(response, "auth")
        challenge = response.json()
        nonce = challenge["nonce"]
        tee_pubkey = self.tee_key.public_jwk()
        device_runtime = {"tee-pubkey": tee_pubkey, "nonce": nonce}
        device_digest = hashlib.sha384(_canonical(device_runtime)).digest()
        additional = ""
        if self.additional_attesters:
            devices = {a.tee: await a.evidence(device_digest) for a in self.additional_attesters}
            additional = json.dumps(devices, separators=(",", ":"))
        primary_runtime = {**device_runtime, "additional-evidence": additional}
        digest = hashlib.sha384(_canonical(primary_runtime)).digest()
        body: dict[str, Any] = {
            "init-data": {"format": "toml", "body": self.init_data}
            if self.init_data is not None
            else None,
            "runtime-data": {"nonce": nonce, "tee-pubkey": tee_pubkey},
            "tee-evidence": {
                "primary_evidence": await self.attester.evidence(digest),
                "additional_evidence": additional,
            },
        }
        response = await self._http.post(f"{self.base}/attest", json=body)
        _raise_for(response, "attest")
        self.token = str(response.json()["token"])
        return self.token

    async def get_resource(self, resource: str, *, bearer: bool = False) -> bytes:
        """Fetch and decrypt a resource (``kbs:///repo/type/tag`` or ``repo/type/tag``).

        With ``bearer=True`` the token is sent as ``Authorization: Bearer`` (the
        passport/token flow confidential-data-hub uses) instead of the session cookie.

        Raises:
            KbsClientError: the server refused the request.
        """
        path = parse_resource_uri(resource)
        url = f"{self.base}/resource/{path}"
        if self.token is None:
            await self.attest()
        for attempt in range(1, GET_RESOURCE_MAX_ATTEMPTS + 1):
            if bearer:
                # The passport flow: the token alone, no session cookie.
                self._http.cookies.clear()
                response = await self._http.get(
                    url, headers={"Authorization": f"Bearer {self.token}"}
                )
            else:
                response = await self._http.get(url)
            if response.status_code == 401 and attempt < GET_RESOURCE_MAX_ATTEMPTS:  # noqa: PLR2004
                _logger.info("resource request unauthorized; re-running the handshake")
                await self.attest()
                continue
            _raise_for(response, f"get resource {path}")
            return self.tee_key.decrypt(response.json())
        raise KbsClientError("unreachable")  # pragma: no cover


class AdminClient:
    """Drives the admin endpoints with a Bearer token."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        private_key_pem: bytes | None = None,
        role: str = "admin",
        issuer: str | None = None,
        audience: str | None = None,
        http: httpx.AsyncClient | None = None,
        verify: bool | str = True,
        timeout: float = DEFAULT_TIMEOUT_S,
        role_claim: str = "role",
    ) -> None:
        """Authenticate with ``token``, or sign short-lived tokens with ``private_key_pem``.

        Signed tokens carry ``role`` in the claim ``role_claim`` (a comma-separated
        ``role`` becomes a list, for ``groups``-style claims).

        Raises:
            ValueError: neither or both of ``token`` and ``private_key_pem`` are given.
        """
        if (token is None) == (private_key_pem is None):
            raise ValueError("give exactly one of token and private_key_pem")
        self.base = url.rstrip("/") + "/kbs/v0"
        self._token = token
        self._key_pem = private_key_pem
        self._role = role
        self._role_claim = role_claim
        self._issuer = issuer
        self._audience = audience
        self._http = http or httpx.AsyncClient(verify=verify, timeout=timeout)
        self._owns_http = http is None

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_http:
            await self._http.aclose()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._bearer()}"}

    def _bearer(self) -> str:
        if self._token is not None:
            return self._token
        assert self._key_pem is not None
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: PLC0415

        key = serialization.load_pem_private_key(self._key_pem, password=None)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            alg = "EdDSA"
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            alg = "ES256"
        elif isinstance(key, rsa.RSAPrivateKey):
            alg = "RS256"
        else:
            raise ValueError("admin key must be Ed25519, EC P-256 or RSA")
        now = dt.datetime.now(dt.UTC)  # noqa: TID251 - the client signs with its own clock
        roles = [r for r in self._role.split(",") if r]
        claims: dict[str, Any] = {
            self._role_claim: self._role if len(roles) == 1 else roles,
            "iat": int(now.timestamp()),
            "exp": int(now.timestamp()) + 300,
        }
        if self._issuer:
            claims["iss"] = self._issuer
        if self._audience:
            claims["aud"] = [self._audience]
        return jwt.encode(claims, key, algorithm=alg)

    async def set_resource(self, path: str, data: bytes) -> str | None:
        """Store ``data`` at ``repo/type/tag``; return the new version id, if any."""
        response = await self._http.post(
            f"{self.base}/resource/{parse_resource_uri(path)}",
            content=data,
            headers={**self._headers(), "Content-Type": "application/octet-stream"},
        )
        _raise_for(response, "set resource")
        version: str | None = response.headers.get(VERSION_HEADER)
        return version

    async def delete_resource(self, path: str, *, version: str | None = None) -> None:
        """Delete ``repo/type/tag`` (and its kept versions), or only one kept ``version``."""
        params = {"version": version} if version is not None else None
        response = await self._http.delete(
            f"{self.base}/resource/{parse_resource_uri(path)}",
            params=params,
            headers=self._headers(),
        )
        _raise_for(response, "delete resource")

    async def list_resources(
        self, *, prefix: str | None = None, paths_only: bool = False
    ) -> list[Any]:
        """Resources the caller may read, with metadata (or only their paths)."""
        params = {k: v for k, v in (("prefix", prefix),) if v is not None}
        if paths_only:
            params["format"] = "paths"
        response = await self._http.get(
            f"{self.base}/resource", params=params, headers=self._headers()
        )
        _raise_for(response, "list resources")
        listed: list[Any] = response.json()
        return listed

    async def resource_versions(self, path: str) -> dict[str, Any]:
        """Metadata of ``repo/type/tag`` and of its kept versions."""
        response = await self._http.get(
            f"{self.base}/resource-versions/{parse_resource_uri(path)}", headers=self._headers()
        )
        _raise_for(response, "resource versions")
        body: dict[str, Any] = response.json()
        return body

    async def get_resource_version(self, path: str, version: str) -> bytes:
        """The value of one kept version of ``repo/type/tag`` (admin read)."""
        response = await self._http.get(
            f"{self.base}/resource/{parse_resource_uri(path)}",
            params={"version": version},
            headers=self._headers(),
        )
        _raise_for(response, "get resource version")
        return response.content

    async def rollback_resource(self, path: str, version: str) -> dict[str, Any]:
        """Make kept ``version`` of ``repo/type/tag`` current again."""
        response = await self._http.post(
            f"{self.base}/resource-rollback/{parse_resource_uri(path)}",
            json={"version": version},
            headers=self._headers(),
        )
        _raise_for(response, "rollback resource")
        body: dict[str, Any] = response.json()
        return body

    async def set_release_policy(
        self,
        prefix: str,
        *,
        rego: str | None = None,
        allow_list: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, Any]:
        """Attach a release policy (Rego text, or an allow list) to a path pattern."""
        if (rego is None) == (allow_list is None):
            raise ValueError("give exactly one of rego and allow_list")
        body: dict[str, Any] = {"prefix": prefix}
        if rego is not None:
            body["policy"] = _b64url(rego.encode())
        else:
            body["allow_list"] = {k: list(v) for k, v in (allow_list or {}).items()}
        response = await self._http.post(
            f"{self.base}/release-policy", json=body, headers=self._headers()
        )
        _raise_for(response, "set release policy")
        stored: dict[str, Any] = response.json()
        return stored

    async def list_release_policies(self) -> list[dict[str, Any]]:
        """The release policies the caller may see (metadata)."""
        response = await self._http.get(f"{self.base}/release-policy", headers=self._headers())
        _raise_for(response, "list release policies")
        listed: list[dict[str, Any]] = response.json()
        return listed

    async def get_release_policy(self, prefix: str) -> dict[str, Any]:
        """One release policy; ``rego`` holds its decoded text."""
        response = await self._http.get(
            f"{self.base}/release-policy", params={"prefix": prefix}, headers=self._headers()
        )
        _raise_for(response, "get release policy")
        body: dict[str, Any] = response.json()
        encoded = str(body.get("policy", ""))
        body["rego"] = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        return body

    async def delete_release_policy(self, prefix: str) -> None:
        """Remove the release policy on ``prefix``."""
        response = await self._http.delete(
            f"{self.base}/release-policy", params={"prefix": prefix}, headers=self._headers()
        )
        _raise_for(response, "delete release policy")

    async def explain(
        self,
        resource: str,
        *,
        token: str | None = None,
        claims: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Why ``resource`` would (not) be released for ``token`` (or ``claims``)."""
        if (token is None) == (claims is None):
            raise ValueError("give exactly one of token and claims")
        body: dict[str, Any] = {"resource": parse_resource_uri(resource)}
        if token is not None:
            body["token"] = token
        else:
            body["claims"] = dict(claims or {})
        if query:
            body["query"] = dict(query)
        response = await self._http.post(f"{self.base}/explain", json=body, headers=self._headers())
        _raise_for(response, "explain")
        explained: dict[str, Any] = response.json()
        return explained

    async def audit(self, **filters: str | int | None) -> dict[str, Any]:
        """One page of audit records.

        Filters: kind, action, outcome, actor, request_id, resource (a path pattern),
        since, until (RFC 3339), after, before (sequence numbers), limit, order.
        """
        params = {k: str(v) for k, v in filters.items() if v is not None}
        response = await self._http.get(
            f"{self.base}/audit", params=params, headers=self._headers()
        )
        _raise_for(response, "audit")
        page: dict[str, Any] = response.json()
        return page

    async def audit_verify(self) -> dict[str, Any]:
        """The server's check of the whole audit chain."""
        response = await self._http.get(f"{self.base}/audit/verify", headers=self._headers())
        _raise_for(response, "audit verify")
        report: dict[str, Any] = response.json()
        return report

    async def whoami(self) -> dict[str, Any]:
        """The caller's identity and grants as the server sees them."""
        response = await self._http.get(f"{self.base}/admin/whoami", headers=self._headers())
        _raise_for(response, "whoami")
        body: dict[str, Any] = response.json()
        return body

    async def set_resource_policy(self, rego: str) -> None:
        """Install ``rego`` as the resource policy."""
        body = {"policy": _b64url(rego.encode())}
        response = await self._http.post(
            f"{self.base}/resource-policy", json=body, headers=self._headers()
        )
        _raise_for(response, "set resource policy")

    async def get_resource_policy(self) -> Any:
        """The stored resource policy ids."""
        response = await self._http.get(f"{self.base}/resource-policy", headers=self._headers())
        _raise_for(response, "get resource policy")
        return response.json()

    async def set_attestation_policy(self, rego: str, *, policy_id: str = "default_cpu") -> None:
        """Install ``rego`` as attestation policy ``policy_id``."""
        body = {"type": "rego", "policy_id": policy_id, "policy": _b64url(rego.encode())}
        response = await self._http.post(
            f"{self.base}/attestation-policy", json=body, headers=self._headers()
        )
        _raise_for(response, "set attestation policy")

    async def set_reference_values(self, values: Mapping[str, Any]) -> None:
        """Register ``{name: value}`` reference values (an RVPS ``sample`` message)."""
        payload = base64.b64encode(json.dumps(dict(values)).encode()).decode()
        message = {"version": "0.1.0", "type": "sample", "payload": payload}
        response = await self._http.post(
            f"{self.base}/reference-value", json=message, headers=self._headers()
        )
        _raise_for(response, "set reference value")

    async def get_reference_value(self, name: str) -> Any:
        """The stored value of reference value ``name``."""
        response = await self._http.get(
            f"{self.base}/reference-value/{name}", headers=self._headers()
        )
        _raise_for(response, "get reference value")
        return response.json()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
