# SPDX-License-Identifier: Apache-2.0
"""The services one application instance runs on, built once by ``create_app``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy.ext.asyncio import AsyncEngine

from kbs.admin_auth import AdminAuthorizer
from kbs.appraisal import AttestationService
from kbs.audit import AuditLog
from kbs.clock import Clock
from kbs.entropy import Entropy
from kbs.ratelimit import NO_PROXIES, RateLimiter, TrustedProxies
from kbs.release_policies import ReleasePolicyStore
from kbs.resources import ResourceRouter
from kbs.sessions import SessionStore
from kbs.settings import KbsSettings
from kbs.stores import PolicyStore, ReferenceValueStore
from kbs.tdx import TdxService
from kbs.tokens import SimpleTokenSigner, TokenSigner, TokenVerifier
from policy.base import PolicyEngine

_logger = logging.getLogger(__name__)

__all__ = ["KbsState"]


@dataclass(frozen=True, slots=True)
class KbsState:
    """Everything a request handler needs; one per application instance."""

    settings: KbsSettings
    clock: Clock
    entropy: Entropy
    engine: AsyncEngine
    sessions: SessionStore
    policies: PolicyStore
    reference_values: ReferenceValueStore
    policy_engine: PolicyEngine
    signer: TokenSigner
    token_verifier: TokenVerifier
    attestation: AttestationService
    resources: ResourceRouter
    admin: AdminAuthorizer
    simple_signer: SimpleTokenSigner
    rate_limiter: RateLimiter
    #: Ours (issue 4): the audit trail and per-resource release policies.
    audit: AuditLog
    release_policies: ReleasePolicyStore
    #: The TDX verifier's PCCS client and collateral cache (``None``: TDX disabled).
    tdx: TdxService | None = None
    #: ``[http_server] trusted_proxies``: whose ``X-Forwarded-For`` names the client.
    trusted_proxies: TrustedProxies = NO_PROXIES

    @property
    def body_limit(self) -> int:
        """Largest accepted request body, bytes."""
        return self.settings.http_server.payload_request_size * 1024 * 1024

    def published_jwks(self) -> dict[str, Any]:
        """The JWK Set of both token signers (EAR, then Simple), as every API serves it."""
        return {"keys": [dict(self.signer.jwks_entry), dict(self.simple_signer.jwks_entry)]}

    def token_certificates_pem(self) -> str:
        """The certificate chains of both token signers, PEM, each certificate once."""
        seen: list[str] = []
        for signer in (self.signer, self.simple_signer):
            for cert in signer.cert_chain:
                pem = cert.public_bytes(serialization.Encoding.PEM).decode()
                if pem not in seen:
                    seen.append(pem)
        return "".join(seen)
