"""Prometheus metrics of the service, in a registry of its own per app."""

from __future__ import annotations

import time

from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ServiceMetrics:
    """The service's Prometheus metrics, in a registry of its own (two apps in one process do not
    clash): request latency, errors and requests in flight by route; forward-pass sizes and
    durations; inputs waiting for a pass."""

    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("mhc_request_duration_seconds", "Seconds to answer a request, by route.", ["route"],
                                 registry=self.registry, buckets=LATENCY_BUCKETS)
        self.errors = Counter("mhc_request_errors", "Requests answered with a 4xx or 5xx status, by route and status.",
                              ["route", "status"], registry=self.registry)
        self.in_flight = Gauge("mhc_requests_in_flight", "Requests being answered, by route.", ["route"],
                               registry=self.registry)
        self.batch_size = Histogram("mhc_batch_size", "Inputs per forward pass (its count: the passes; its sum: the inputs).",
                                    registry=self.registry, buckets=batch_size_buckets(max_batch_size))
        self.forward_seconds = Histogram("mhc_forward_duration_seconds", "Seconds of one forward pass.",
                                         registry=self.registry, buckets=LATENCY_BUCKETS)
        self.queued = Gauge("mhc_batch_queue_inputs", "Inputs waiting for a forward pass.", registry=self.registry)

    def record_pass(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.forward_seconds.observe(seconds)

    def record_request(self, route: str, status: int, seconds: float) -> None:
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, str(status)).inc()

    def exposition(self, accept: str | None) -> Response:
        """The metrics in the Prometheus text format, or OpenMetrics if ``accept`` asks (``GET /metrics``)."""
        encode, content_type = choose_encoder(accept or "")
        return Response(encode(self.registry), media_type=content_type)


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def batch_size_buckets(max_batch_size: int) -> list[float]:
    """Every size up to 32, so the histogram counts each size exactly, then powers of two up to ``max_batch_size``."""
    sizes = set(range(1, min(max_batch_size, 32) + 1)) | {2.0**k for k in range(6, 31) if 2**k < max_batch_size}
    return sorted(sizes | {max_batch_size})


class RequestMetrics:
    """ASGI middleware timing each request and counting its errors and those in flight, by
    route: a path of the app's, or ``other`` (unknown paths make no new series)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: frozenset[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = 500  # unless a response starts: an exception that escapes every handler

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        began = time.perf_counter()
        with self.metrics.in_flight.labels(route).track_inprogress():
            try:
                await self.app(scope, receive, send_noting_status)
            finally:
                self.metrics.record_request(route, status, time.perf_counter() - began)


