"""Plugging the upstream tier into the daemon's app, in one call the service makes.

Kept here (not in the service) so the service needs three lines: ``source = setup(app)``, pass
``source.as_sources()`` and ``source.on_build_done`` to its Ensurer, and put
``base_resolver(app)`` in its resolver chain. The build side's optional helpers (stage keys
before a build, the lock of a stored image) are looked up by name so that they plug in as soon
as they exist, without another change here or in the service.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from envcache.upstream.base import BasePuller
from envcache.upstream.push import push_status
from envcache.upstream.source import UpstreamSource

UPSTREAM = web.AppKey("envcache_upstream", UpstreamSource)
BASE_PULLER = web.AppKey("envcache_base_puller", BasePuller)


def _build_helper(name: str) -> Any:
    try:
        return getattr(importlib.import_module("envcache.build"), name, None)
    except ImportError:
        return None


def setup(app: web.Application) -> UpstreamSource:
    """Create the daemon's upstream source from ``config.upstreams`` and manage its lifetime."""
    store, config = app["store"], app["config"]
    upstreams = list(getattr(config, "upstreams", None) or [])
    stage_keys_for = _build_helper("stage_keys_for")
    lock_from_store = _build_helper("lock_from_store")

    async def stage_keys(prepared: Any) -> list[str]:
        from envcache.service.wiring import ENGINE

        handle = app.get(ENGINE)
        engine = await handle.get() if handle is not None else None
        if engine is None:
            return []
        return list(await stage_keys_for(prepared.definition, prepared.variant, engine=engine, config=config))

    source = UpstreamSource(store, upstreams, stage_keys=stage_keys if stage_keys_for else None,
                            lock_reader=lock_from_store)
    app[UPSTREAM] = source
    _register_metrics(app, source)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        source.pushes.resume(upstreams)
        yield
        await source.aclose()
        puller = _app.get(BASE_PULLER)
        if puller is not None:
            await puller.aclose()

    app.cleanup_ctx.append(lifecycle)
    return source


class _UpstreamCollector:
    """Prometheus collector read at scrape time: pulls by result, bytes, and pushes by state.

    Push states come from the ``upstream_pushes`` table, so a push that failed before a restart
    still shows up as failed until it is retried or pruned.
    """

    def __init__(self, source: UpstreamSource) -> None:
        self.source = source

    def describe(self) -> list[Any]:
        return []   # values are read live in collect(); nothing to pre-register

    def collect(self) -> Any:
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
        for state, count in push_status(self.source.store.db, limit=0)["counts"].items():
            pushes.add_metric([state], count)
        yield pushes


def _register_metrics(app: web.Application, source: UpstreamSource) -> None:
    """Add the upstream collector to the daemon's own Prometheus registry, if it has one."""
    from envcache.service.metrics import METRICS_KEY

    metrics = app.get(METRICS_KEY)
    if metrics is not None:
        metrics.registry.register(_UpstreamCollector(source))  # type: ignore[attr-defined]


def base_resolver(app: web.Application) -> BasePuller:
    """Pull-through resolver for base images (mirrors first, then the origin)."""
    puller = BasePuller(app["store"], list(getattr(app["config"], "upstreams", None) or []))
    app[BASE_PULLER] = puller
    return puller
