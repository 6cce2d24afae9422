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

:func:`client_address` is the one place that decides who the client is: the socket peer,
or, when the peer is one of ``[http_server] trusted_proxies`` (the load balancer), the
address ``X-Forwarded-For`` names. The header is read from the right, the end the
trusted proxies append to, skipping hops that are themselves trusted; the first
untrusted hop is the client. Anything a client wrote to the left of that is ignored, so a
client cannot pick its own bucket; an untrusted peer's header is ignored entirely, and a
malformed hop falls back to the peer (fail closed: the proxy's shared bucket).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, TypeAlias

from starlette.requests import Request

from kbs.errors import RateLimitedError
from kbs.settings import RateLimitSettings

_logger = logging.getLogger(__name__)

__all__ = ["NO_PROXIES", "RateLimiter", "TrustedProxies", "client_address"]

#: The key used when the server cannot tell the client's address (e.g. a Unix socket).
UNKNOWN_CLIENT: Final = "unknown"


#: ``X-Forwarded-For`` hops examined at most (from the right); more trusted hops than
#: this and the peer is used. Bounds the work a long header can cause.
MAX_FORWARDED_HOPS: Final = 16

_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_address(text: str) -> _Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The networks whose ``X-Forwarded-For`` header is believed."""

    def __init__(self, networks: list[str] | tuple[str, ...]) -> None:
        """Parse ``networks`` (addresses or CIDR blocks, host bits allowed).

        Raises:
            ValueError: an entry is neither an address nor a network.
        """
        self._networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(entry.strip(), strict=False) for entry in networks
        )

    def __bool__(self) -> bool:
        """Whether any proxy is trusted."""
        return bool(self._networks)

    def trusts(self, address: _Address) -> bool:
        """Whether ``address`` is a trusted proxy."""
        return any(address in network for network in self._networks)

    def client(self, peer: str, forwarded_for: list[str]) -> str:
        """The client behind ``peer`` given its ``X-Forwarded-For`` header values.

        1. An untrusted (or unparsable) peer is the client; its header is ignored.
        2. The hops are walked from the right; trusted hops are skipped.
        3. The first untrusted hop is the client. A malformed hop, or more than
           :data:`MAX_FORWARDED_HOPS` trusted ones, gives the peer.
        4. If every hop is trusted, the leftmost is the client.
        """
        # 1. Only a trusted peer's header means anything.
        peer_address = _parse_address(peer)
        if peer_address is None or not self.trusts(peer_address) or not forwarded_for:
            return peer
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        # 2. From the right: the nearest hop was appended by the trusted peer itself.
        last: _Address | None = None
        for examined, hop in enumerate(reversed(hops)):
            if examined >= MAX_FORWARDED_HOPS:
                return peer
            address = _parse_address(hop)
            if address is None:
                return peer
            # 3. The first hop we do not trust is the client.
            if not self.trusts(address):
                return str(address)
            last = address
        # 4. A request from inside the trusted networks.
        return str(last) if last is not None else peer


#: No proxy is trusted: the socket peer is always the client.
NO_PROXIES: Final = TrustedProxies(())


def client_address(request: Request, proxies: TrustedProxies = NO_PROXIES) -> str:
    """The address a request is accounted to (rate limits, logs, audit).

    The peer's IP address, unless the peer is one of ``proxies``: then the client named
    by ``X-Forwarded-For`` (see :meth:`TrustedProxies.client`). uvicorn's own
    ``proxy_headers`` stays off, so ``request.client`` is always the socket peer.
    """
    client = request.client
    if client is None or not client.host:
        return UNKNOWN_CLIENT
    if not proxies:
        return client.host
    return proxies.client(client.host, request.headers.getlist("x-forwarded-for"))


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
