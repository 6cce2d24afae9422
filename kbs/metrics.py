# SPDX-License-Identifier: Apache-2.0
"""Prometheus metrics at ``GET /metrics``: the reference's names, plus our dependencies'.

The reference (Trustee ``kbs/src/prometheus.rs``, docs/prometheus.md) exports
``kbs_http_*``, ``kbs_resource_*``, ``kbs_policy_*``, ``kbs_attestation_*``, ``kbs_auth_*``
and ``kbs_build_info``; we export the same names with the same meaning (see
docs/operations.md for every metric), and add DCAP verification time, PCCS and KMS calls,
the collateral cache and rate-limit rejections.

Labels are bounded, so a guest cannot create series at will:

* ``method`` is one of the standard methods or ``other``; ``route`` is the matched
  route's *template* (``/kbs/v0/resource/{path}``), never the
  request path; requests no route matched share ``<unmatched>``;
* ``resource_path`` is set only after the resource was found *and* released (reads), or
  by an authorised admin (writes, deletes): the set of series is the set of stored
  resources, not of paths guests try;
* ``tee_type`` is the TEE of the session, which ``/auth`` only opens for the fixed set
  of kbs-types TEE names (``attestation.base.TEE_CLASSES``);
* ``endpoint`` (PCCS), ``action`` and ``kind`` (KMS), ``result`` (cache) and ``outcome``
  take values from fixed sets in our code, never from a URL or a remote message.

With several worker processes (``kbs serve --workers N``), each worker counts its own
requests and a scrape reaches one of them. ``kbs serve`` therefore points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before it starts the workers; the
client library then keeps the values in files there, and ``/metrics`` adds up every
worker's (gauges say how: ``livesum`` for connections, ``max`` for build info). Without
that variable (one process, tests) the app's own registry is served.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, Literal

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from attestation.base import NotProvided, VerifiedClaims, Verifier
from attestation.errors import EvidenceInvalidError, UnsupportedTeeError
from kbs import __version__
from kbs.clock import monotonic

_logger = logging.getLogger(__name__)

__all__ = [
    "BUILD_DATE_ENV",
    "BUILD_GIT_HASH_ENV",
    "MULTIPROC_DIR_ENV",
    "Metrics",
    "MetricsMiddleware",
    "TimedVerifier",
    "attestation_failed",
    "counted_attestation",
    "metrics_of",
    "router",
]

#: The client library's switch for multi-process mode.
MULTIPROC_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: ``kbs_build_info`` labels, set at image build time (``unknown`` otherwise).
BUILD_GIT_HASH_ENV: Final = "KBS_BUILD_GIT_HASH"
BUILD_DATE_ENV: Final = "KBS_BUILD_DATE"
#: The route label of requests no route matched.
UNMATCHED_ROUTE: Final = "<unmatched>"
#: HTTP methods kept as label values; anything else a client sends is ``OTHER_METHOD``.
KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
OTHER_METHOD: Final = "other"
#: The scrape endpoint, left out of the request metrics (as the reference does).
METRICS_PATH: Final = "/metrics"
#: Request duration buckets, seconds: the reference's (0.5 ms ... 1 s) and beyond, since
#: an attestation that waits for a PCCS can take seconds.
DURATION_BUCKETS: Final = (
    0.0005,
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: Body size buckets, bytes: the reference's 32 ... 8192 (x4), then up to the 2 MiB limit.
SIZE_BUCKETS: Final = (32.0, 128.0, 512.0, 2048.0, 8192.0, 32768.0, 131072.0, 524288.0, 2097152.0)
#: Evidence verification buckets, seconds (a warm DCAP verification is about 1 ms).
VERIFY_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)

#: What a collateral lookup found: fresh in memory, stale but valid (served while a
#: refresh runs), or nothing valid in memory (store or PCCS consulted).
CacheResult = Literal["hit", "stale", "miss"]


def _counter(name: str, doc: str, labels: Iterable[str], registry: CollectorRegistry) -> Counter:
    return Counter(name, doc, list(labels), registry=registry)


class Metrics:
    """The metrics of one application instance, in a registry of its own."""

    def __init__(self) -> None:
        """Create the metrics (multi-process aware when ``PROMETHEUS_MULTIPROC_DIR`` is set)."""
        self.registry = registry = CollectorRegistry(auto_describe=True)
        # ---- HTTP (reference names; our labels are route templates and status codes)
        self.requests = _counter(
            "kbs_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry,
        )
        self.duration = Histogram(
            "kbs_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ["method", "route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.request_size = Histogram(
            "kbs_http_request_size_bytes",
            "Request body sizes (Content-Length; 0 without one), by method and route template.",
            ["method", "route"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.response_size = Histogram(
            "kbs_http_response_size_bytes",
            "Response body sizes, by method and route template.",
            ["method", "route"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.active_connections = Gauge(
            "kbs_http_active_connections",
            "HTTP requests being processed now (all workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.rate_limited = _counter(
            "kbs_http_rate_limited",
            "Requests refused with 429 (rate limit or session cap), by route template.",
            ["route"],
            registry,
        )
        # ---- resources (resource_path: existing, released or admin-written paths only)
        self.resource_reads = _counter(
            "kbs_resource_reads",
            "Resources released to guests, by resource path.",
            ["resource_path"],
            registry,
        )
        self.resource_writes = _counter(
            "kbs_resource_writes",
            "Resources stored by admins, by resource path.",
            ["resource_path"],
            registry,
        )
        self.resource_deletes = _counter(
            "kbs_resource_deletes",
            "Resources (or kept versions) deleted by admins, by resource path.",
            ["resource_path"],
            registry,
        )
        # ---- resource policy (reference: no labels)
        self.policy_evaluations = _counter(
            "kbs_policy_evaluations", "Resource policy evaluations.", (), registry
        )
        self.policy_approvals = _counter(
            "kbs_policy_approvals", "Resource requests the policies allowed.", (), registry
        )
        self.policy_violations = _counter(
            "kbs_policy_violations", "Resource requests the policies denied.", (), registry
        )
        self.policy_errors = _counter(
            "kbs_policy_errors", "Resource policy evaluations that failed.", (), registry
        )
        self.policy_remembered = _counter(
            "kbs_policy_outcomes_remembered",
            "Policy outcomes of release decisions answered from the decision memo (the "
            "same token, policy text, path and query as an earlier decision).",
            (),
            registry,
        )
        # ---- RCAR handshake (reference names and labels)
        self.auth_requests = _counter(
            "kbs_auth_requests", "POST /kbs/v0/auth requests.", (), registry
        )
        self.auth_successes = _counter(
            "kbs_auth_successes", "Sessions opened by /kbs/v0/auth.", (), registry
        )
        self.auth_errors = _counter(
            "kbs_auth_errors",
            "/kbs/v0/auth requests refused (malformed, version, tee).",
            (),
            registry,
        )
        self.attestation_requests = _counter(
            "kbs_attestation_requests", "POST /kbs/v0/attest requests.", (), registry
        )
        self.attestation_successes = _counter(
            "kbs_attestation_successes",
            "Attestations that issued a token, by TEE type.",
            ["tee_type"],
            registry,
        )
        self.attestation_failures = _counter(
            "kbs_attestation_failures",
            "Attestations whose evidence was rejected (nonce, binding, signature, policy), "
            "by TEE type.",
            ["tee_type"],
            registry,
        )
        self.attestation_errors = _counter(
            "kbs_attestation_errors",
            "/kbs/v0/attest requests that failed before or beside verification (no session, "
            "malformed body, verifier unavailable).",
            (),
            registry,
        )
        self.build_info = Gauge(
            "kbs_build_info",
            "Build information; the value is always 1.",
            ["version", "git_hash", "build_date"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.build_info.labels(
            __version__,
            os.environ.get(BUILD_GIT_HASH_ENV, "unknown"),
            os.environ.get(BUILD_DATE_ENV, "unknown"),
        ).set(1)
        # ---- ours: evidence verification, PCCS, collateral cache, KMS
        self.verification_seconds = Histogram(
            "kbs_evidence_verification_seconds",
            "Time to verify one piece of evidence (for tdx: quote parsing, PCK chain, "
            "collateral lookup and DCAP), by TEE and outcome.",
            ["tee", "outcome"],
            buckets=VERIFY_BUCKETS,
            registry=registry,
        )
        self.pccs_requests = _counter(
            "kbs_pccs_requests",
            "HTTP requests to the PCCS / Intel PCS, by endpoint kind.",
            ["endpoint"],
            registry,
        )
        self.pccs_errors = _counter(
            "kbs_pccs_errors",
            "PCCS requests that failed (HTTP status, network, size cap), by endpoint kind.",
            ["endpoint"],
            registry,
        )
        self.collateral_cache = _counter(
            "kbs_collateral_cache_lookups",
            "DCAP collateral lookups: hit (fresh), stale (served while refreshing), miss.",
            ["result"],
            registry,
        )
        self.kms_requests = _counter(
            "kbs_kms_requests",
            "Calls to Alibaba Cloud KMS (each attempt), by API action.",
            ["action"],
            registry,
        )
        self.kms_errors = _counter(
            "kbs_kms_errors",
            "KMS calls that failed, by API action and error kind.",
            ["action", "kind"],
            registry,
        )

    # ------------------------------------------------------------------ observer hooks
    # attestation/ and storage_backends/ may not import kbs/ or prometheus: they call
    # these plain methods through the small observer protocols they declare.

    def collateral_lookup(self, result: CacheResult) -> None:
        """Count one collateral cache lookup."""
        self.collateral_cache.labels(result).inc()

    def pccs_request(self, endpoint: str, *, ok: bool) -> None:
        """Count one PCCS HTTP request (and its failure)."""
        self.pccs_requests.labels(endpoint).inc()
        if not ok:
            self.pccs_errors.labels(endpoint).inc()

    def kms_request(self, action: str, *, error_kind: str | None) -> None:
        """Count one KMS call attempt (and its failure, by kind)."""
        self.kms_requests.labels(action).inc()
        if error_kind is not None:
            self.kms_errors.labels(action, error_kind).inc()

    def exposition(self) -> bytes:
        """The text exposition format: every worker's values in multi-process mode."""
        if os.environ.get(MULTIPROC_DIR_ENV):
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


def metrics_of(request: Request) -> Metrics:
    """The metrics of the application serving ``request``."""
    metrics: Metrics = request.app.state.metrics
    return metrics


_ATTESTATION_FAILED: Final = "kbs_attestation_failed"


def attestation_failed(request: Request, tee: str) -> None:
    """Count a rejected attestation (nonce, binding, evidence) of a ``tee`` session.

    ``tee`` comes from the session, which ``/auth`` opens only for known TEE names.
    """
    metrics_of(request).attestation_failures.labels(tee).inc()
    setattr(request.state, _ATTESTATION_FAILED, True)


def counted_attestation(
    endpoint: Callable[..., Awaitable[Response]],
) -> Callable[..., Awaitable[Response]]:
    """Count every call of the ``/attest`` route it wraps, and its errors.

    The route counts successes and :func:`attestation_failed` itself; anything else it
    raises (no session, malformed body, verifier unavailable) is an error.
    """

    @functools.wraps(endpoint)
    async def wrapper(**kwargs: Any) -> Response:
        request: Request = kwargs["request"]
        metrics = metrics_of(request)
        metrics.attestation_requests.inc()
        try:
            return await endpoint(**kwargs)
        except Exception:
            if not getattr(request.state, _ATTESTATION_FAILED, False):
                metrics.attestation_errors.inc()
            raise

    return wrapper


class TimedVerifier(Verifier):
    """A verifier that records how long its inner verifier takes, and the outcome."""

    def __init__(self, inner: Verifier, metrics: Metrics) -> None:
        """Wrap ``inner`` (same TEE name), recording into ``metrics``."""
        self.tee = inner.tee
        self.inner = inner
        self._metrics = metrics

    async def verify(
        self,
        evidence: Any,
        *,
        report_data: bytes | Literal[NotProvided.MARKER],
        init_data_hash: bytes | Literal[NotProvided.MARKER],
        at: dt.datetime,
    ) -> VerifiedClaims:
        """Verify with the inner verifier (its contract, errors included), timed."""
        started = monotonic()
        try:
            claims = await self.inner.verify(
                evidence, report_data=report_data, init_data_hash=init_data_hash, at=at
            )
        except (EvidenceInvalidError, UnsupportedTeeError):
            self._observe("rejected", started)
            raise
        except BaseException:
            self._observe("error", started)
            raise
        self._observe("ok", started)
        return claims

    def _observe(self, outcome: str, started: float) -> None:
        self._metrics.verification_seconds.labels(self.tee, outcome).observe(monotonic() - started)

    async def _verify(
        self,
        evidence: Any,
        *,
        report_data: bytes | Literal[NotProvided.MARKER],
        init_data_hash: bytes | Literal[NotProvided.MARKER],
        at: dt.datetime,
    ) -> VerifiedClaims:
        return await self.inner.verify(
            evidence, report_data=report_data, init_data_hash=init_data_hash, at=at
        )


class MetricsMiddleware:
    """Counts, sizes and times every HTTP request under its route template."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        """Wrap ``app``, recording into ``metrics``."""
        self.app = app
        self.metrics = metrics
        # The labelled children per (method, route, status), looked up once: labels() takes
        # a lock and builds keys, half the cost of recording. Bounded like the labels.
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any, Any]] = {}

    def _record(
        self, method: str, route: str, status: int, elapsed: float, sizes: tuple[int, int]
    ) -> None:
        key = (method, route, str(status))
        children = self._children.get(key)
        if children is None:
            m = self.metrics
            children = self._children[key] = (
                m.requests.labels(*key),
                m.duration.labels(method, route),
                m.request_size.labels(method, route),
                m.response_size.labels(method, route),
            )
        requests, duration, request_size, response_size = children
        requests.inc()
        duration.observe(elapsed)
        request_size.observe(sizes[0])
        response_size.observe(sizes[1])
        if status == 429:  # noqa: PLR2004
            self.metrics.rate_limited.labels(route).inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Call the app and record method, route template, status, sizes and duration."""
        if scope["type"] != "http" or scope.get("path") == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        started = monotonic()
        status = 500
        sent = 0
        request_size = 0
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                request_size = int(value) if value.isdigit() else 0
                break

        async def recording_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        metrics.active_connections.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            metrics.active_connections.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            method = str(scope.get("method", ""))
            if method not in KNOWN_METHODS:
                method = OTHER_METHOD  # h11 accepts any token as a method
            self._record(method, template, status, monotonic() - started, (request_size, sent))


router = APIRouter()


@router.get(METRICS_PATH, summary="Prometheus metrics", include_in_schema=False)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition of this deployment's metrics."""
    return Response(metrics_of(request).exposition(), media_type=CONTENT_TYPE_LATEST)
