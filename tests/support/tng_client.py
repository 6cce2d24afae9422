# SPDX-License-Identifier: Apache-2.0
"""Clients of the attestation-service API that behave as the real ones do.

Written from the research notes (../shared/research/restful-as.md §3-§4), check by check:

* :class:`Tng22Verifier` — TNG v2.2.1/v2.2.4 (rats-rs ``34a0ed47``): the legacy body only,
  exactly one POST, status must be 200, a Simple RS384 token whose header ``jwk`` verifies
  it, ``customized_claims.runtime_data`` *equal* to the expected object, ``exp``/``nbf``,
  ``evaluation-reports`` listing every configured policy id, and (only with
  ``trusted_certs``) the ``x5c`` chain (base64url, no padding) as a TLS server certificate.
* :class:`Tng24Verifier` — TNG v2.4+ (``jsonwebtoken`` + rustls-webpki): the current body
  first (legacy only if the 400 says ``missing field `tee```), ``GET {as_addr}/certificate``
  as trust anchors, header ``jwk`` with ``x5c`` (base64url, no padding) chaining to them
  for client auth, the JWK's ``alg``, ``exp``/``nbf`` with 60 s leeway, no ``aud``; EAR:
  ``eat_profile``, runtime data subset at ``cpu0``, every submodule ``affirming`` with one
  ``ear.appraisal-policy-id`` equal to every configured id; Simple: as v2.2 (subset match).
* :func:`coco_as_token` — the attestation agent's ``coco_as`` getter: the current body
  without runtime data, URL built without trimming slashes.

The attester side (:func:`sample_evidence`, :func:`tdx_evidence`) commits to
SHA-384 of the runtime data JSON, as TNG's attester asks the attestation agent to.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

EAR_PROFILE = "tag:github.com,2024:confidential-containers/Trustee"


class TngError(Exception):
    """The client refused the answer (as the real client would fail the handshake)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def strict_b64url_decode(text: str) -> bytes:
    """The Rust ``URL_SAFE_NO_PAD`` engine: no padding, no ``+``/``/``."""
    if "=" in text or "+" in text or "/" in text:
        raise TngError("Illegal x5c cert: not base64url without padding")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise TngError("Illegal base64url") from exc


def tng_runtime_data(report: bytes) -> dict[str, str]:
    """What TNG v2.2 binds into the evidence: the 32-byte DICE claims digest, wrapped."""
    return {"rats-rs.raw_runtime_data": b64url(report)}


def report_data_for(runtime_data: Any) -> bytes:
    """SHA-384 of the runtime data's canonical JSON (what the attester asks the AA for)."""
    return hashlib.sha384(rfc8785.dumps(runtime_data)).digest()


def sample_evidence(report_data: bytes, *, svn: str = "1") -> bytes:
    """The AA's sample evidence JSON text for ``report_data``."""
    return json.dumps({"svn": svn, "report_data": base64.b64encode(report_data).decode()}).encode()


def tdx_evidence(quote: bytes) -> bytes:
    """The AA's TDX evidence JSON text for ``quote`` (no event log)."""
    return json.dumps({"cc_eventlog": None, "quote": base64.b64encode(quote).decode()}).encode()


def _split(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    parts = token.split(".")
    if len(parts) != 3:
        raise TngError("Illegal JWT format")
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        signature = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
    except ValueError as exc:
        raise TngError("token parts are not base64url JSON") from exc
    return header, claims, signature, f"{parts[0]}.{parts[1]}".encode()


def _rsa_from_jwk(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey:
    n = int.from_bytes(strict_b64url_decode(jwk["n"]), "big")
    e = int.from_bytes(strict_b64url_decode(jwk["e"]), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


def _spki(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_end_entity(leaf: x509.Certificate, usage: x509.ObjectIdentifier) -> None:
    try:
        if leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise TngError("CaUsedAsEndEntity")
    except x509.ExtensionNotFound:
        pass
    try:
        ekus = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if usage not in ekus:
        raise TngError("RequiredEkuNotFound")


def webpki_like_chain_check(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    at: dt.datetime,
    usage: x509.ObjectIdentifier,
) -> None:
    """The checks rustls-webpki makes that matter here.

    The end entity must not be a CA, its extended key usage (if any) must include
    ``usage``, every certificate must be valid at ``at``, and the path must end in a
    certificate whose subject and key an anchor has (an anchor is only a name and a key).
    """
    _check_end_entity(leaf, usage)
    current = leaf
    pool = list(intermediates)
    for _ in range(len(intermediates) + 1):
        if not current.not_valid_before_utc <= at <= current.not_valid_after_utc:
            raise TngError("certificate expired or not yet valid")
        for anchor in anchors:
            if anchor.subject == current.issuer:
                try:
                    current.verify_directly_issued_by(anchor)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                return
        parent = next((c for c in pool if c.subject == current.issuer), None)
        if parent is None:
            break
        current.verify_directly_issued_by(parent)
        pool.remove(parent)
        current = parent
    raise TngError("UnknownIssuer: token signer does not chain to a trusted certificate")


@dataclass
class Tng22Verifier:
    """The verifying side of TNG v2.2.x in background-check mode."""

    http: httpx.AsyncClient
    as_addr: str
    policy_ids: Sequence[str]
    trusted_certs: Sequence[x509.Certificate] | None = None
    sent: list[dict[str, Any]] = field(default_factory=list)

    async def verify(self, *, tee: str, evidence: bytes, report: bytes, now: dt.datetime) -> str:
        """Send the evidence the peer's certificate carried; return the accepted token."""
        expected = tng_runtime_data(report)
        body = {
            "tee": "sgx" if tee == "sgx-dcap" else tee,
            "evidence": b64url(evidence),
            "runtime_data": {"structured": expected},
            "init_data": None,
            "runtime_data_hash_algorithm": "sha384",
            "init_data_hash_algorithm": None,
            "policy_ids": list(self.policy_ids),
        }
        self.sent.append(body)
        response = await self.http.post(
            f"{self.as_addr.rstrip('/')}/attestation",
            content=json.dumps(body),
            headers={"Content-Type": "application/json", "User-Agent": "rats-rs/0.1.0"},
        )
        if response.status_code != 200:
            raise TngError(
                f"Error returned from restful-as. status: {response.status_code} "
                f"response: {response.text}"
            )
        token = response.text
        header, claims, signature, signed = _split(token)
        _check_runtime_data_equal(claims, expected)
        _check_times(claims, now)
        public = _check_rs384_signature(header, claims, signature, signed)
        if self.trusted_certs is not None:
            _check_x5c_for_server_auth(
                header.get("jwk") or claims["jwk"], public, self.trusted_certs, now
            )
        _check_policy_ids(claims, self.policy_ids)
        return token


def _check_runtime_data_equal(claims: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    # The compact (sorted-key) serialization must be equal: no extra members.
    got = claims.get("customized_claims", {}).get("runtime_data")
    if got is None:
        raise TngError("Can not found `runtime_data` in CoCo AS token")
    if json.dumps(got, separators=(",", ":"), sort_keys=True) != json.dumps(
        expected, separators=(",", ":"), sort_keys=True
    ):
        raise TngError("runtime_data mismatch")


def _check_times(claims: Mapping[str, Any], now: dt.datetime) -> None:
    stamp = int(now.timestamp())
    if not isinstance(claims.get("exp"), int):
        raise TngError("token expiration unset")
    if claims["exp"] < stamp:
        raise TngError("token expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, int) and stamp + 5 < nbf:
        raise TngError("token is before validity")


def _check_rs384_signature(
    header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes, signed: bytes
) -> rsa.RSAPublicKey:
    # The header JWK (v1.0.6+), falling back to the claims copy (older rats-rs).
    jwk = header.get("jwk") or claims.get("jwk")
    if not isinstance(jwk, dict):
        raise TngError("CoCo Attestation Token Claims must contain public key")
    if header.get("alg") != "RS384":
        raise TngError("Unsupported JWT algrithm")
    if any(not isinstance(jwk.get(m), str) for m in ("kty", "alg", "n", "e")):
        raise TngError("RSA JWK lacks kty, alg, n or e")
    if jwk["alg"] != "RS384":
        raise TngError("Unmatched RSA JWK alg")
    public = _rsa_from_jwk(jwk)
    try:
        public.verify(signature, signed, padding.PKCS1v15(), hashes.SHA384())
    except InvalidSignature as exc:
        raise TngError("RS384 verify failed") from exc
    return public


def _check_x5c_for_server_auth(
    jwk: Mapping[str, Any],
    public: rsa.RSAPublicKey,
    trusted_certs: Sequence[x509.Certificate],
    now: dt.datetime,
) -> None:
    # Only with trusted_certs_paths; without them any self-signed token passes.
    x5c = jwk.get("x5c")
    if not x5c:
        raise TngError("Missing certificate in Attestation Token JWK")
    chain = [x509.load_der_x509_certificate(strict_b64url_decode(c)) for c in x5c]
    webpki_like_chain_check(
        chain[0], chain[1:], trusted_certs, at=now, usage=ExtendedKeyUsageOID.SERVER_AUTH
    )
    if _spki(chain[0].public_key()) != _spki(public):
        raise TngError("Certificate Public Key Mismatched in Attestation Token")


def _check_policy_ids(claims: Mapping[str, Any], policy_ids: Sequence[str]) -> None:
    reports = claims.get("evaluation-reports")
    if not isinstance(reports, list):
        raise TngError("Can not found `evaluation-reports` array in CoCo AS token")
    ids = {r["policy-id"] for r in reports}
    for policy_id in policy_ids:
        if policy_id not in ids:
            raise TngError(f"evaluation failure on policy_id `{policy_id}`")


@dataclass
class Tng24Verifier:
    """The verifying side of TNG v2.4+ (background check, restful AS)."""

    http: httpx.AsyncClient
    as_addr: str
    policy_ids: Sequence[str]
    trusted_certs: Sequence[x509.Certificate] = ()
    requests: list[str] = field(default_factory=list)

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        url = f"{self.as_addr.rstrip('/')}/attestation"
        self.requests.append(f"POST {url}")
        return await self.http.post(
            url, content=json.dumps(body), headers={"Content-Type": "application/json"}
        )

    async def anchors(self) -> list[x509.Certificate]:
        url = f"{self.as_addr.rstrip('/')}/certificate"
        self.requests.append(f"GET {url}")
        response = await self.http.get(url)
        if not response.is_success:
            raise TngError(f"HTTP error when fetching certificates from {url}")
        anchors = [*self.trusted_certs, *x509.load_pem_x509_certificates(response.content)]
        if not anchors:
            raise TngError("Cannot verify token since trusted cert is empty")
        return anchors

    async def verify(
        self, *, tee: str, evidence: bytes, runtime_data: Mapping[str, Any], now: dt.datetime
    ) -> dict[str, Any]:
        """Send the evidence; return the accepted token's claims."""
        current = {
            "verification_requests": [
                {
                    "tee": tee,
                    "evidence": b64url(evidence),
                    "runtime_data": {"structured": dict(runtime_data)},
                    "init_data": None,
                    "runtime_data_hash_algorithm": "sha384",
                }
            ],
            "policy_ids": list(self.policy_ids),
        }
        response = await self._post(current)
        if response.status_code != 200 and "missing field `tee`" in response.text:
            legacy = {"tee": tee, **current["verification_requests"][0]}
            legacy["policy_ids"] = list(self.policy_ids)
            response = await self._post(legacy)
        if response.status_code != 200:
            raise TngError(f"status {response.status_code}: {response.text}")
        claims = await self.check_token(response.text, now=now)
        self.check_claims(claims, runtime_data)
        return claims

    async def check_token(self, token: str, *, now: dt.datetime) -> dict[str, Any]:
        """The token verifier: trust anchors from ``/certificate``, then the JWS."""
        anchors = await self.anchors()
        header = jwt.get_unverified_header(token)
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise TngError("Cannot verify token since trusted JWK Set is empty")
        x5c = jwk.get("x5c")
        if not x5c:
            raise TngError("No x5c extension inside JWK. Invalid public key.")
        chain = [
            x509.load_der_x509_certificate(strict_b64url_decode(c.replace("\n", ""))) for c in x5c
        ]
        leaf = chain[0]
        key = jwt.PyJWK(jwk).key
        if _spki(leaf.public_key()) != _spki(key):
            raise TngError("JWK does not match certificate")
        webpki_like_chain_check(
            leaf, chain[1:], anchors, at=now, usage=ExtendedKeyUsageOID.CLIENT_AUTH
        )
        # An independent opinion on the same chain: cryptography's client verifier.
        verifier = PolicyBuilder().store(Store(anchors)).time(now).build_client_verifier()
        try:
            verifier.verify(leaf, chain[1:])
        except x509.verification.VerificationError as exc:
            raise TngError(f"JWK cannot be validated by trust anchor: {exc}") from exc
        alg = jwk.get("alg")
        if not isinstance(alg, str):
            raise TngError("Failed to find key_algorithm in Jwk")
        if alg != header.get("alg"):
            raise TngError("InvalidAlgorithm")
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[alg],
                leeway=60,
                options={"require": ["exp"], "verify_nbf": True, "verify_aud": True},
            )
        except jwt.PyJWTError as exc:
            raise TngError(f"Failed to decode attestation token: {exc}") from exc

    def check_claims(self, claims: Mapping[str, Any], runtime_data: Mapping[str, Any]) -> None:
        """Runtime data and policy ids, EAR or Simple."""
        if "eat_profile" in claims:
            if claims["eat_profile"] != EAR_PROFILE:
                raise TngError("Unsupported EAT profile")
            submods = claims["submods"]
            got = submods["cpu0"]["ear.veraison.annotated-evidence"]["runtime_data_claims"]
            policy_ids = set()
            for name, submod in submods.items():
                if submod.get("ear.status") != "affirming":
                    raise TngError(
                        f'EAR status of {name} should be "affirming" but got '
                        f"{submod.get('ear.status')!r}"
                    )
                if "ear.trustworthiness-vector" not in submod:
                    raise TngError("Can not found ear.trustworthiness-vector")
                policy_ids.add(submod["ear.appraisal-policy-id"])
            if len(policy_ids) != 1:
                raise TngError("submodules carry different policy ids")
            allowed = policy_ids
        else:
            got = claims["customized_claims"]["runtime_data"]
            allowed = {r["policy-id"] for r in claims["evaluation-reports"]}
        if not isinstance(got, dict) or any(got.get(k) != v for k, v in runtime_data.items()):
            raise TngError("runtime_data mismatch")
        for policy_id in self.policy_ids:
            if policy_id not in allowed:
                raise TngError(f"evaluation failure on policy_id `{policy_id}`")


async def coco_as_token(http: httpx.AsyncClient, url: str, *, tee: str, evidence: bytes) -> str:
    """The attestation agent's ``coco_as`` token getter (guest-components, 2025-05+)."""
    response = await http.post(
        f"{url}/attestation",  # no slash trimming: ".../as/" gives ".../as//attestation"
        content=json.dumps(
            {
                "verification_requests": [{"tee": tee, "evidence": b64url(evidence)}],
                "policy_ids": [],
            }
        ),
        headers={"Content-Type": "application/json"},
    )
    if response.status_code != 200:
        raise TngError(f"Remote Attestation Failed, AS Response: {response.text}")
    return response.text
