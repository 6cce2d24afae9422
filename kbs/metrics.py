# SPDX-License-Identifier: Apache-2.0
"""Prometheus metrics at ``GET /metrics``: requests by route template and status.

Labels are bounded: the route is the matched route's *template*
(``/kbs/v0/resource/{repository}/{type}/{tag}``), never the request path, and requests
that match no route share one label. Nothing secret or guest-identifying is recorded.

With several worker processes (``kbs serve --workers N``), each worker counts its own
requests and a scrape reaches one of them. ``kbs serve`` therefore points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before it starts the workers; the
client library then keeps the values in files there, and ``/metrics`` adds up every
worker's. Without that variable (one process, tests) the app's own registry is served.
"""

from __future__ import annotations

import logging
import os
from typing import Final

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kbs.clock import monotonic

_logger = logging.getLogger(__name__)

__all__ = ["MULTIPROC_DIR_ENV", "Metrics", "MetricsMiddleware", "router"]

#: The client library's switch for multi-process mode.
MULTIPROC_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: The route label of requests no route matched.
UNMATCHED_ROUTE: Final = "<unmatched>"
#: Request duration buckets, seconds (attestation with collateral fetches can take seconds).
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The metrics of one application instance, in a registry of its own."""

    def __init__(self) -> None:
        """Create the metrics (multi-process aware when ``PROMETHEUS_MULTIPROC_DIR`` is set)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "kbs_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "kbs_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ["method", "route"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The text exposition format: every worker's values in multi-process mode."""
        if os.environ.get(MULTIPROC_DIR_ENV):
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        """Wrap ``app``, recording into ``metrics``."""
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Call the app and record method, route template, status and duration."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = monotonic()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.duration.labels(method, template).observe(monotonic() - started)


router = APIRouter()


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition of this deployment's request metrics."""
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
