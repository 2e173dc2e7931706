"""Prometheus ``/metrics``: how well the cache works (hit rate), what builds cost, what is served.

Each app gets its own :class:`~prometheus_client.CollectorRegistry` so two daemons in one
process (the test suite runs several) never share or double-register counters.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """The daemon's counters and gauges; handlers increment them, gauges read live values."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.hits = Counter("envcache_hits", "Lookups answered from the cache", ["variant"], registry=self.registry)
        self.misses = Counter("envcache_misses", "Lookups that found no image", ["variant"], registry=self.registry)
        self.builds = Counter("envcache_builds", "Builds finished, by outcome", ["outcome"], registry=self.registry)
        self.build_seconds = Histogram(
            "envcache_build_seconds", "Wall time of builds, queue wait included",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600), registry=self.registry,
        )
        self.bytes_served = Counter(
            "envcache_registry_bytes_served", "Blob bytes sent by the /v2 registry", registry=self.registry
        )
        self.queue_depth = Gauge("envcache_build_queue_depth", "Builds waiting for a build slot", registry=self.registry)
        self.builds_running = Gauge("envcache_builds_running", "Builds in progress", registry=self.registry)

    def bind_queue(self, depth: Callable[[], int], running: Callable[[], int]) -> None:
        """Gauges read the live value at scrape time instead of being kept in sync by hand."""
        self.queue_depth.set_function(depth)
        self.builds_running.set_function(running)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS_KEY = web.AppKey("envcache_metrics", Metrics)


async def _metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS_KEY].render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _count_blob_bytes(request: web.Request, response: web.StreamResponse) -> None:
    """Count /v2 blob bodies as they are sent (FileResponse knows its length at prepare time)."""
    if request.method == "GET" and request.path.startswith("/v2/") and "/blobs/" in request.path:
        length = response.content_length
        if length and 200 <= response.status < 300:
            request.app[METRICS_KEY].bytes_served.inc(length)


def setup(app: web.Application) -> Metrics:
    """Create the app's metrics, serve them at /metrics, count registry bytes."""
    metrics = Metrics()
    app[METRICS_KEY] = metrics
    app.router.add_get("/metrics", _metrics_handler)
    app.on_response_prepare.append(_count_blob_bytes)
    return metrics

