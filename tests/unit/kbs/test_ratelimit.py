# SPDX-License-Identifier: Apache-2.0
"""The per-client token bucket: burst, refill, clock steps, bounded memory."""

from __future__ import annotations

import datetime as dt

import pytest
from starlette.requests import Request

from kbs.errors import RateLimitedError, describe
from kbs.ratelimit import RateLimiter, client_address
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
