# SPDX-License-Identifier: Apache-2.0
"""Per-client rate limiting of the unauthenticated endpoints that cost us work.

``POST /kbs/v0/auth`` writes a session row; the attestation-service ``/attestation``
verifies evidence (a TDX quote costs milliseconds of CPU and maybe a PCCS request).
Neither needs credentials, so each client address gets a token bucket: ``burst``
requests at once, refilled at ``rate`` per second. Time comes from the request's
instant (``at=``, the injected clock), never from the wall clock, so tests can move it.

Memory is bounded: at most ``max_clients`` buckets, the least recently used forgotten
first. An attacker with many addresses can make us forget a bucket, which only hands
that client a fresh (full) bucket: the limit degrades, memory does not grow. Buckets are
per process; with N workers or replicas a client may get up to N times the limit.

:func:`client_address` is the one place that decides who the client is (a later change
adds trusted-proxy ``X-Forwarded-For`` handling there).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request

from kbs.errors import RateLimitedError
from kbs.settings import RateLimitSettings

_logger = logging.getLogger(__name__)

__all__ = ["RateLimiter", "client_address"]

#: The key used when the server cannot tell the client's address (e.g. a Unix socket).
UNKNOWN_CLIENT: Final = "unknown"


def client_address(request: Request) -> str:
    """The address a request is accounted to: the peer's IP address.

    Proxy headers are not trusted here (anyone can send ``X-Forwarded-For``); behind a
    proxy every client therefore shares the proxy's bucket.
    """
    client = request.client
    if client is None or not client.host:
        return UNKNOWN_CLIENT
    return client.host


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float  # seconds since the epoch of the last refill


class RateLimiter:
    """Token buckets by client key, bounded in number."""

    def __init__(self, *, rate: float, burst: int, max_clients: int, enabled: bool = True) -> None:
        """Allow ``burst`` requests at once per client, refilled at ``rate`` per second.

        Raises:
            ValueError: a parameter is not positive.
        """
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate, burst and max_clients must be positive")
        self._rate = float(rate)
        self._burst = float(burst)
        self._max_clients = max_clients
        self._enabled = enabled
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: RateLimitSettings) -> RateLimiter:
        """Build the limiter ``[rate_limit]`` describes."""
        return cls(
            rate=settings.requests_per_second,
            burst=settings.burst,
            max_clients=settings.max_clients,
            enabled=settings.enabled,
        )

    def __len__(self) -> int:
        """Number of clients currently remembered."""
        return len(self._buckets)

    def try_acquire(self, client: str, *, at: dt.datetime) -> float:
        """Take one token for ``client`` at instant ``at``.

        Returns 0.0 when the request may proceed, else the seconds until a token is
        available.
        """
        if not self._enabled:
            return 0.0
        now = at.timestamp()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = _Bucket(tokens=self._burst, updated=now)
            self._buckets[client] = bucket
            while len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
            # A clock that steps backwards refills nothing (and never drains).
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
            bucket.updated = max(bucket.updated, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate

    def check(self, client: str, *, at: dt.datetime) -> None:
        """Take one token for ``client`` or refuse the request.

        Raises:
            RateLimitedError: the client's bucket is empty (answered 429 with
                ``Retry-After``).
        """
        wait = self.try_acquire(client, at=at)
        if wait > 0:
            _logger.info("rate limit: refused a request from %s", client)
            raise RateLimitedError(
                "too many requests from this client", retry_after_s=max(1, math.ceil(wait))
            )
