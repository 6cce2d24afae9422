# SPDX-License-Identifier: Apache-2.0
"""Bounded retries with exponential backoff and jitter, sleeping without blocking the loop.

Only :class:`~.api.KmsRequestError` whose kind is retryable (throttling, 5xx, network
errors, timeouts) is retried. Attempts are capped by ``max_attempts``; retrying stops early
when the next sleep would cross ``deadline`` seconds since the first attempt (each attempt
is itself bounded by the client's connect/read timeouts). A ``Retry-After`` style hint from
the service raises the delay, never lowers it.

Delays use "equal jitter": ``base/2 + uniform(0, base/2)`` with
``base = min(backoff_max, backoff_initial * 2**(n-1))`` before retry ``n``, so the wait
always grows while concurrent callers still spread out.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from storage_backends.aliyun_kms.api import KmsRequestError

_logger = logging.getLogger(__name__)

__all__ = ["RetryPolicy", "retrying"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry one KMS operation."""

    max_attempts: int
    backoff_initial: float
    backoff_max: float
    deadline: float

    def delay(self, retry_number: int, fraction: float) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based); ``fraction`` in [0, 1)."""
        base = min(self.backoff_max, self.backoff_initial * float(1 << (retry_number - 1)))
        return base / 2 + fraction * base / 2


async def retrying(
    call: Callable[[], Awaitable[_T]],
    *,
    policy: RetryPolicy,
    monotonic: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
    jitter: Callable[[], float],
) -> _T:
    """Run ``call`` until it succeeds, fails for good, or the policy runs out.

    Raises:
        KmsRequestError: the last failure (non-retryable, or retries exhausted).
    """
    started = monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except KmsRequestError as err:
            if not err.kind.retryable or attempt >= policy.max_attempts:
                raise
            delay = policy.delay(attempt, jitter())
            if err.retry_after is not None:
                delay = max(delay, err.retry_after)
            if monotonic() - started + delay > policy.deadline:
                _logger.info(
                    "aliyun kms: %s; retry deadline reached after %d attempts", err, attempt
                )
                raise
            _logger.info(
                "aliyun kms: %s; retry %d of %d in %.2fs",
                err,
                attempt,
                policy.max_attempts - 1,
                delay,
            )
            await sleep(delay)
