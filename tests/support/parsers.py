# SPDX-License-Identifier: Apache-2.0
"""What the TDX parser property tests do with one input: parse it, and use what parses."""

from __future__ import annotations

from attestation.tdx.errors import EventLogParseError
from attestation.tdx.eventlog import parse_event_log


def event_log_ok_or_ours(data: bytes) -> None:
    """Parse ``data`` as a CC event log; if it parses, build its claims and replay RTMR 1-4.

    A parse refused with our own error is fine; any other exception fails the caller.
    """
    try:
        log = parse_event_log(data)
    except EventLogParseError:
        return
    log.to_claims()
    for index in range(1, 5):
        log.replay(index)
