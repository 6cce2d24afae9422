# SPDX-License-Identifier: Apache-2.0
"""Intel TDX evidence: quote and event-log parsers, DCAP verification, collateral."""

from attestation.tdx.errors import (
    EventLogParseError,
    EventLogReplayError,
    PckChainError,
    QuoteParseError,
)
from attestation.tdx.eventlog import EventLog, EventLogEntry, parse_event_log
from attestation.tdx.pck import PckChain, parse_pck_chain
from attestation.tdx.quote import Quote, TdReport, parse_quote, quote_claims

__all__ = [
    "EventLog",
    "EventLogEntry",
    "EventLogParseError",
    "EventLogReplayError",
    "PckChain",
    "PckChainError",
    "Quote",
    "QuoteParseError",
    "TdReport",
    "parse_event_log",
    "parse_pck_chain",
    "parse_quote",
    "quote_claims",
]
