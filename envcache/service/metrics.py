"""Prometheus ``/metrics``: how well the cache works (hit rate), what builds cost, what is served,
and what the upstream tier does. The same events feed the dashboard's time series
(:class:`~envcache.service.activity.Activity`), so the two can never disagree about what happened.

Each app gets its own :class:`~prometheus_client.CollectorRegistry` so two daemons in one
process (the test suite runs several) never share or double-register counters.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from envcache.oci import MANIFEST_TYPES
from envcache.service.activity import Activity
from envcache.upstream.push import push_status

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from envcache.upstream.source import UpstreamSource


class Metrics:
    """The daemon's counters and gauges; handlers increment them, gauges read live values."""

    def __init__(self, activity: Activity) -> None:
        self.activity = activity
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
        # Read before each scrape: values that live in the store (prometheus collects synchronously).
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    def lookup(self, variant: str, hit: bool) -> None:
        """One cache lookup (resolve, ensure, warm item) and whether an image answered it."""
        (self.hits if hit else self.misses).labels(variant).inc()
        self.activity.count("hit" if hit else "miss")

    def build_done(self, outcome: str, seconds: float) -> None:
        """A build ended: ``built``, ``pulled`` (from an upstream), ``unchanged`` or ``failed``."""
        self.builds.labels(outcome).inc()
        self.build_seconds.observe(seconds)
        self.activity.count({"pulled": "upstream", "unchanged": "built"}.get(outcome, outcome))

    def bind_queue(self, depth: Callable[[], int], running: Callable[[], int]) -> None:
        """Gauges read the live value at scrape time instead of being kept in sync by hand."""
        self.queue_depth.set_function(depth)
        self.builds_running.set_function(running)

    def watch_upstream(self, source: UpstreamSource) -> None:
        collector = _UpstreamCollector(source)
        self.registry.register(collector)
        self._refreshers.append(collector.refresh)

    async def render(self) -> bytes:
        for refresh in self._refreshers:
            await refresh()
        return generate_latest(self.registry)

    async def handler(self, request: web.Request) -> web.Response:
        return web.Response(body=await self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def count_served(self, request: web.Request, response: web.StreamResponse) -> None:
        """Count /v2 blob bodies as they are sent (FileResponse knows its length at prepare time),
        and image pulls: a GET of an image manifest (an index only leads to one, so a pull of a
        multi-platform tag counts once, and a HEAD is a client checking, not pulling)."""
        if request.method != "GET" or not request.path.startswith("/v2/") or not 200 <= response.status < 300:
            return
        if "/blobs/" in request.path:
            if response.content_length:
                self.bytes_served.inc(response.content_length)
        elif "/manifests/" in request.path and response.content_type in MANIFEST_TYPES:
            self.activity.count("pull")


class _UpstreamCollector:
    """Pulls by result, bytes, and pushes by state. Push states come from the store's push log,
    so a push that failed before a restart still shows up as failed until it is retried."""

    def __init__(self, source: UpstreamSource) -> None:
        self.source = source
        self.push_counts: dict[str, int] = {}

    async def refresh(self) -> None:
        self.push_counts = (await push_status(self.source.store.pushes, limit=0))["counts"]

    def describe(self) -> list[Any]:
        return []   # values are read live in collect(); nothing to pre-register

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counters = self.source.counters
        pulls = CounterMetricFamily("envcache_upstream_pulls", "Image lookups on upstream registries, by result",
                                    labels=["result"])
        pulls.add_metric(["hit"], counters["pull_hits"])
        pulls.add_metric(["miss"], counters["pull_misses"])
        pulls.add_metric(["error"], counters["pull_errors"])
        yield pulls
        yield CounterMetricFamily("envcache_upstream_stage_pulls", "Shared stage images pulled before a build",
                                  value=counters["stage_pulls"])
        yield CounterMetricFamily("envcache_upstream_pulled_bytes", "Blob bytes copied from upstream registries",
                                  value=counters["bytes_pulled"])
        pushes = GaugeMetricFamily("envcache_upstream_pushes", "Pushes to upstream registries, by state",
                                   labels=["state"])
        for state, count in self.push_counts.items():
            pushes.add_metric([state], count)
        yield pushes
