# SPDX-License-Identifier: Apache-2.0
"""The services one application instance runs on, built once by ``create_app``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from kbs.admin_auth import AdminAuthorizer
from kbs.appraisal import AttestationService
from kbs.audit import AuditLog
from kbs.clock import Clock
from kbs.entropy import Entropy
from kbs.release_policies import ReleasePolicyStore
from kbs.resources import ResourceRouter
from kbs.sessions import SessionStore
from kbs.settings import KbsSettings
from kbs.stores import PolicyStore, ReferenceValueStore
from kbs.tokens import TokenSigner, TokenVerifier
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
    #: Ours (issue 4): the audit trail and per-resource release policies.
    audit: AuditLog
    release_policies: ReleasePolicyStore

    @property
    def body_limit(self) -> int:
        """Largest accepted request body, bytes."""
        return self.settings.http_server.payload_request_size * 1024 * 1024
