"""Plugging the upstream tier into the daemon's app, in one call the service makes.

The service's counterpart, :mod:`envcache.service.wiring`, connects the ensure machinery to the
engine; this module connects it to the shared registries. It lives here (not in the service)
so the service needs only this: ``source = setup(app, engine)``, then ``source.as_sources()``
and ``source.on_build_done`` for its Ensurer and ``app[BASE_PULLER]`` in its resolver chain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from envcache.upstream.base import BasePuller, stored_copy
from envcache.upstream.push import push_status
from envcache.upstream.source import LogFn, UpstreamSource

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from envcache.builder.engines import Engine
    from envcache.service.ensure import Prepared

UPSTREAM = web.AppKey("envcache_upstream", UpstreamSource)
BASE_PULLER = web.AppKey("envcache_base_puller", BasePuller)


def setup(app: web.Application, engine: Callable[[], Awaitable[Engine | None]]) -> UpstreamSource:
    """Create the daemon's upstream source and base puller from ``config.upstreams``, for the app's lifetime.

    ``engine`` returns the daemon's engine (None without one): stage keys are computed the way
    a build computes them, from the base image as the engine has it.
    """
    from envcache.builder.builder import stage_keys_for
    from envcache.builder.stages import lock_from_store

    store, config = app["store"], app["config"]
    upstreams = list(config.upstreams)
    stored_base = stored_copy(store)

    async def stage_keys(prepared: Prepared, log: LogFn) -> list[str]:
        found = await engine()
        if found is None:
            return []
        # Same base handling as a build: the engine's copy, else the one pulled through the store.
        return await stage_keys_for(prepared.definition, prepared.variant, engine=found, config=config,
                                    log=log, store=store, stored_base=stored_base)

    source = app[UPSTREAM] = UpstreamSource(store, upstreams, stage_keys=stage_keys, lock_reader=lock_from_store)
    puller = app[BASE_PULLER] = BasePuller(store, upstreams)
    _register_metrics(app, source)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        source.pushes.resume(upstreams)
        yield
        await source.aclose()
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
        for state, count in push_status(self.source.store.db, limit=0)["counts"].items():
            pushes.add_metric([state], count)
        yield pushes


def _register_metrics(app: web.Application, source: UpstreamSource) -> None:
    """Add the upstream collector to the daemon's own Prometheus registry."""
    from envcache.service.metrics import METRICS_KEY

    app[METRICS_KEY].registry.register(_UpstreamCollector(source))
