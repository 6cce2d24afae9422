# SPDX-License-Identifier: Apache-2.0
"""The per-client token bucket: burst, refill, clock steps, bounded memory."""

from __future__ import annotations

import datetime as dt

import pytest
from starlette.requests import Request

from kbs.errors import RateLimitedError, describe
from kbs.ratelimit import (
    MAX_FORWARDED_HOPS,
    NO_PROXIES,
    RateLimiter,
    TrustedProxies,
    client_address,
)
from kbs.settings import RateLimitSettings

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_burst_then_refill():
    limiter = RateLimiter(rate=2, burst=3, max_clients=10)
    assert [limiter.try_acquire("a", at=T0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.try_acquire("a", at=T0) == pytest.approx(0.5)
    # Half a second later one token is back, and only one.
    assert limiter.try_acquire("a", at=at(0.5)) == 0.0
    assert limiter.try_acquire("a", at=at(0.5)) > 0
    # A long pause refills to the burst, never beyond.
    assert [limiter.try_acquire("a", at=at(100)) for _ in range(4)].count(0.0) == 3


def test_clients_are_independent():
    limiter = RateLimiter(rate=1, burst=1, max_clients=10)
    assert limiter.try_acquire("a", at=T0) == 0.0
    assert limiter.try_acquire("a", at=T0) > 0
    assert limiter.try_acquire("b", at=T0) == 0.0


def test_clock_stepping_back_neither_refills_nor_drains():
    limiter = RateLimiter(rate=1, burst=2, max_clients=10)
    limiter.try_acquire("a", at=at(10))
    limiter.try_acquire("a", at=at(10))
    assert limiter.try_acquire("a", at=at(5)) > 0  # no refill from the past
    assert limiter.try_acquire("a", at=at(10.5)) > 0  # and the past did not move "updated"
    assert limiter.try_acquire("a", at=at(11)) == 0.0


def test_memory_is_bounded_and_least_recent_is_forgotten():
    limiter = RateLimiter(rate=1, burst=1, max_clients=3)
    for name in ("a", "b", "c"):
        limiter.try_acquire(name, at=T0)
    limiter.try_acquire("a", at=T0)  # "a" is now the most recent (and empty)
    limiter.try_acquire("d", at=T0)  # evicts "b"
    assert len(limiter) == 3
    assert limiter.try_acquire("a", at=T0) > 0  # still remembered, still empty
    assert limiter.try_acquire("b", at=T0) == 0.0  # forgotten: a fresh bucket
    for n in range(1000):
        limiter.try_acquire(f"flood-{n}", at=T0)
    assert len(limiter) == 3


def test_check_raises_with_retry_after_in_whole_seconds():
    limiter = RateLimiter(rate=0.25, burst=1, max_clients=3)
    limiter.check("a", at=T0)
    with pytest.raises(RateLimitedError, match="too many requests") as info:
        limiter.check("a", at=T0)
    assert info.value.retry_after_s == 4
    assert describe(info.value).status == 429
    assert describe(info.value).variant == "TooManyRequests"


def test_disabled_limiter_allows_everything():
    limiter = RateLimiter.from_settings(RateLimitSettings(enabled=False, burst=1))
    for _ in range(100):
        limiter.check("a", at=T0)
    assert len(limiter) == 0


@pytest.mark.parametrize(
    "kwargs", [{"rate": 0, "burst": 1}, {"rate": 1, "burst": 0}, {"rate": -1, "burst": 1}]
)
def test_parameters_must_be_positive(kwargs):
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(max_clients=1, **kwargs)


def test_client_address_is_the_peer_not_a_header():
    scope = {
        "type": "http",
        "headers": [(b"x-forwarded-for", b"203.0.113.9")],
        "client": ("10.1.2.3", 5555),
    }
    assert client_address(Request(scope)) == "10.1.2.3"
    assert client_address(Request({"type": "http", "headers": [], "client": None})) == "unknown"


def _request(peer: str | None, *forwarded: str) -> Request:
    return Request(
        {
            "type": "http",
            "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
            "client": (peer, 5555) if peer is not None else None,
        }
    )


ALB = TrustedProxies(["10.0.0.0/8", "2001:db8::/32"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        # An untrusted peer's header is ignored, whatever it says.
        ("192.0.2.1", ["203.0.113.9"], "192.0.2.1"),
        ("192.0.2.1", ["10.0.0.5"], "192.0.2.1"),
        # Through the balancer: the hop it appended is the client.
        ("10.0.0.2", ["203.0.113.9"], "203.0.113.9"),
        # A client's own (spoofed) entries sit to the left and are ignored.
        ("10.0.0.2", ["1.1.1.1, 203.0.113.9"], "203.0.113.9"),
        ("10.0.0.2", ["1.1.1.1", "203.0.113.9"], "203.0.113.9"),
        # Trusted hops (a second proxy tier) are skipped from the right.
        ("10.0.0.2", ["1.1.1.1, 203.0.113.9, 10.9.9.9"], "203.0.113.9"),
        # Every hop trusted: the leftmost is the client.
        ("10.0.0.2", ["10.1.1.1, 10.2.2.2"], "10.1.1.1"),
        # IPv6, canonicalised; an IPv4-mapped peer is its IPv4 address.
        ("2001:db8::1", ["2001:DB8:0:0::ff00:0:1, 2001:db8::7"], "2001:db8::ff00:0:1"),
        ("::ffff:10.0.0.2", ["203.0.113.9"], "203.0.113.9"),
        # Malformed: the peer (the balancer's shared bucket), never a guess.
        ("10.0.0.2", ["not-an-address"], "10.0.0.2"),
        ("10.0.0.2", ["203.0.113.9:4444"], "10.0.0.2"),
        ("10.0.0.2", ["203.0.113.9,"], "10.0.0.2"),
        ("10.0.0.2", [""], "10.0.0.2"),
        # Malformed to the left of the client does not matter: it is never examined.
        ("10.0.0.2", ["garbage, 203.0.113.9"], "203.0.113.9"),
        # No header at all: the peer.
        ("10.0.0.2", [], "10.0.0.2"),
        # Too many trusted hops to examine: the peer.
        ("10.0.0.2", [", ".join(["10.0.0.1"] * (MAX_FORWARDED_HOPS + 1))], "10.0.0.2"),
    ],
)
def test_client_address_through_trusted_proxies(peer, forwarded, client):
    assert client_address(_request(peer, *forwarded), ALB) == client


def test_client_address_without_a_peer_is_unknown():
    assert client_address(_request(None, "203.0.113.9"), ALB) == "unknown"


def test_trusted_proxies_reject_garbage():
    with pytest.raises(ValueError, match="does not appear to be"):
        TrustedProxies(["10.0.0.0/8", "proxy.example"])
    assert not NO_PROXIES
    assert ALB
