"""Prometheus metrics of the inspection service: requests, latency, errors, batches.

Each app has its own registry (no global state), exposed at GET /metrics.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry, model: dict[str, Any]) -> None:
        self.registry = registry
        self.requests = Counter(
            "padim_http_requests",
            "HTTP requests by endpoint and status",
            ["method", "endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "padim_http_request_duration_seconds",
            "HTTP request latency by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "padim_errors",
            "Errors returned, by endpoint and error code",
            ["endpoint", "code"],
            registry=registry,
        )
        self.images = Counter(
            "padim_images_scored", "Images scored, by verdict", ["verdict"], registry=registry
        )
        self.batch_size = Histogram(
            "padim_batch_size", "Images per forward pass", buckets=BATCH_BUCKETS, registry=registry
        )
        self.inference = Histogram(
            "padim_inference_seconds",
            "Model time per forward pass",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "padim_queue_depth", "Images waiting for the model", registry=registry
        )
        info = Gauge(
            "padim_model_info",
            "The served model (value 1)",
            ["model_id", "backbone", "input_size", "version"],
            registry=registry,
        )
        info.labels(
            model_id=str(model.get("model_id")),
            backbone=str(model.get("backbone")),
            input_size=str(model.get("input_size")),
            version=str(model.get("library_version")),
        ).set(1)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def method_label(method: str) -> str:
    """The request method as a metric label: the standard methods, anything else "other" (label
    values stay bounded whatever clients send)."""
    return method if method in HTTP_METHODS else "other"


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by its route template."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(
                method=method_label(scope.get("method", "")), endpoint=endpoint, status=str(status)
            ).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
