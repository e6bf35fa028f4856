"""Prometheus metrics of the inspection service: requests, latency, errors, batches.

Each app has its own registry (no global state), exposed at GET /metrics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
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
    """The service's counters; per-model series carry a `model` label whose values are the
    served model names (files on disk), so label values stay bounded."""

    def __init__(self, registry: CollectorRegistry) -> None:
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
            "padim_images_scored",
            "Images scored, by model and verdict",
            ["model", "verdict"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "padim_batch_size",
            "Images per forward pass",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "padim_inference_seconds",
            "Model time per forward pass",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "padim_queue_depth", "Images waiting for the model", ["model"], registry=registry
        )
        self.loads = Counter(
            "padim_model_loads",
            "Model loads (first load, reload of a replaced file) by outcome",
            ["model", "outcome"],
            registry=registry,
        )
        self.loaded = Gauge("padim_models_loaded", "Models held in memory now", registry=registry)
        self.info = Gauge(
            "padim_model_info",
            "A model held in memory (value 1)",
            ["model", "model_id", "backbone", "input_size", "version"],
            registry=registry,
        )
        self.drift = Gauge(
            "padim_drift",
            "1 while the model's drift alarm is on: its last window's median score is above "
            "the held-out good scores' 95 % quantile",
            ["model"],
            registry=registry,
        )
        self.drift_median = Gauge(
            "padim_drift_window_median",
            "Median score of the drift monitor's window",
            ["model"],
            registry=registry,
        )
        self.drift_alarms = Counter(
            "padim_drift_alarms", "Drift alarms raised", ["model"], registry=registry
        )
        self._info_labels: dict[str, tuple[str, ...]] = {}

    def model_in(self, name: str, model: dict[str, Any], pending: Callable[[], float]) -> None:
        """A model (first load or reload) is now served under `name`."""
        self.model_out(name)
        labels = (
            name,
            str(model.get("model_id")),
            str(model.get("backbone")),
            str(model.get("input_size")),
            str(model.get("library_version")),
        )
        self.info.labels(*labels).set(1)
        self._info_labels[name] = labels
        self.queue_depth.labels(model=name).set_function(pending)
        self.loaded.set(len(self._info_labels))

    def model_out(self, name: str) -> None:
        """`name` is no longer held in memory: its info and queue series go."""
        labels = self._info_labels.pop(name, None)
        if labels is not None:
            self.info.remove(*labels)
            self.queue_depth.remove(name)
            for gauge in (self.drift, self.drift_median):
                with contextlib.suppress(KeyError):
                    gauge.remove(name)
        self.loaded.set(len(self._info_labels))

    def observer(self, name: str) -> Callable[[int, float], None]:
        """The batcher's per-batch callback for model `name`."""

        def observe(size: int, seconds: float) -> None:
            self.batch_size.labels(model=name).observe(size)
            self.inference.labels(model=name).observe(seconds)

        return observe


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
