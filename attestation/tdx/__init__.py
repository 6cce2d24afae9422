# SPDX-License-Identifier: Apache-2.0
"""Intel TDX evidence: quote and event-log parsers, DCAP verification, collateral sources.

The application builds a :class:`TdxVerifier` from a :class:`CachingCollateralSource`
(over a :class:`PccsFetcher` and a :class:`CollateralStore`) and registers it for
``tee = "tdx"``.
"""

from attestation.tdx.base import (
    Collateral,
    CollateralKey,
    CollateralSource,
    CollateralStatus,
    CollateralStore,
    StoredCollateral,
)
from attestation.tdx.collateral import (
    ALIBABA_CLOUD_PCCS_URL,
    DEFAULT_PCCS_URLS,
    INTEL_PCS_URL,
    CachingCollateralSource,
    FetchedCollateral,
    MemoryCollateralStore,
    PccsFetcher,
    RefreshReport,
)
from attestation.tdx.dcap import DcapResult, PlatformPolicy, intel_root_ca_der, verify_quote
from attestation.tdx.errors import (
    EventLogParseError,
    EventLogReplayError,
    PckChainError,
    QuoteParseError,
)
from attestation.tdx.eventlog import EventLog, EventLogEntry, parse_event_log
from attestation.tdx.pck import PckChain, parse_pck_chain
from attestation.tdx.pool import VerificationPool
from attestation.tdx.quote import Quote, TdReport, parse_quote, quote_claims
from attestation.tdx.verifier import TdxVerifier

__all__ = [
    "ALIBABA_CLOUD_PCCS_URL",
    "DEFAULT_PCCS_URLS",
    "INTEL_PCS_URL",
    "CachingCollateralSource",
    "Collateral",
    "CollateralKey",
    "CollateralSource",
    "CollateralStatus",
    "CollateralStore",
    "DcapResult",
    "EventLog",
    "EventLogEntry",
    "EventLogParseError",
    "EventLogReplayError",
    "FetchedCollateral",
    "MemoryCollateralStore",
    "PccsFetcher",
    "PckChain",
    "PckChainError",
    "PlatformPolicy",
    "Quote",
    "QuoteParseError",
    "RefreshReport",
    "StoredCollateral",
    "TdReport",
    "TdxVerifier",
    "VerificationPool",
    "intel_root_ca_der",
    "parse_event_log",
    "parse_pck_chain",
    "parse_quote",
    "quote_claims",
    "verify_quote",
]
