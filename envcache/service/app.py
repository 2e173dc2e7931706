"""The composition root: every part of the daemon is built and connected here, and nowhere else.

Lower layers know nothing of each other: the registry, the builder and the upstream tier are
siblings that never import one another, and each takes its own narrow settings. This module
passes callables between them — the builder to the ensure machinery, the stage-key computation
to the upstream source, the base resolvers in the order they are asked — and ties their
lifetimes to the aiohttp application's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import AsyncIterator

from aiohttp import web

from envcache.builder.build import build_image, recompress_image, stage_keys_for
from envcache.builder.keys import RECIPE_VERSION
from envcache.builder.stored import lock_from_store
from envcache.registry import routes as registry
from envcache.service import auth, dashboard, logs, views
from envcache.service.activity import Activity
from envcache.service.bases import BaseDigestResolver, local_engine, own_registry
from envcache.service.config import Config
from envcache.service.daemon import DAEMON, Daemon, EngineHandle
from envcache.service.ensure import Build, BuiltLike, Ensurer, LogFn, Prepared
from envcache.service.environments import Environments
from envcache.service.metrics import Metrics
from envcache.service.pipelines import PipelineRuns, StepRunner
from envcache.service.offload import Offload
from envcache.service.requests import Definitions
from envcache.service.views.gc import collect
from envcache.service.wheels import Wheels
from envcache.store import Store, open_store
from envcache.upstream.base import BasePuller, remote_registry, stored_copy
from envcache.upstream.source import UpstreamSource

log = logging.getLogger(__name__)

#: How often batched last-used, read times and activity counts are written (the hit path and reads never write).
FLUSH_INTERVAL = 10.0


async def create_app(config: Config) -> web.Application:
    """The daemon as an aiohttp application; the store opens here and closes on cleanup."""
    # Bodies are streamed by the registry handlers themselves; this cap only applies to
    # handlers that call request.read()/json() (manifests, the JSON API).
    app = web.Application(client_max_size=8 * 1024 * 1024)
    store = await open_store(config.storage.settings(config.server.data_dir))
    try:
        # The request id first, so every answer (a refusal too) carries it; then auth, which
        # refuses an unsafe bind and installs the token middleware before any route can answer.
        app.middlewares.append(logs.request_ids)
        app.on_response_prepare.append(logs.answer_request_id)
        auth.setup(app, config)
        parts = _assemble(app, config, store)
    except BaseException:
        await store.close()  # release the data directory's lock for whoever tries next
        raise
    with warnings.catch_warnings():
        # The agreed interface for embedders and tests names these string keys.
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["config"], app["store"] = config, store
    app[DAEMON] = parts
    views.setup(app)
    dashboard.setup(app)
    app.router.add_get("/metrics", parts.metrics.handler)
    app.on_response_prepare.append(parts.metrics.count_served)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_stop_builds)
    return app


def _assemble(app: web.Application, config: Config, store: Store) -> Daemon:
    uploads = registry.setup(app, store, upload_ttl=float(config.registry.upload_session_ttl),
                             body_timeout=float(config.server.body_timeout))
    engine = EngineHandle(config.build)
    stored_base = stored_copy(store)
    upstreams = list(config.upstreams)

    async def stage_keys(prepared: Prepared, log: LogFn) -> list[str]:
        # Computed the way a build computes them: from the base as the engine has it.
        found = await engine.get()
        if found is None:
            return []
        return await stage_keys_for(prepared, engine=found, log=log, store=store, stored_base=stored_base)

    upstream = UpstreamSource(store, upstreams, stage_keys=stage_keys, lock_reader=lock_from_store)
    puller = BasePuller(store, upstreams)

    async def engine_image_id(reference: str) -> str | None:
        found = await engine.get()
        info = await found.inspect(reference) if found is not None else None
        return info.id if info else None

    own_hosts = {f"{config.server.host}:{config.server.port}", f"127.0.0.1:{config.server.port}",
                 f"localhost:{config.server.port}"}
    # Asked in this order; all answer the same value for the same image (its config digest), so
    # the order only decides which is asked first, never which key comes out.
    resolvers = [own_registry(store, own_hosts), local_engine(engine_image_id), puller, remote_registry]

    async def build(prepared: Prepared, log: LogFn) -> BuiltLike:
        # Detected again now: an engine installed or started after the daemon is found.
        found, version = await engine.ready()
        log(f"envcache: building with {found.name} {version}")
        # Bases the engine lacks are loaded from their pulled-through copy in the store.
        return await build_image(prepared, store=store, engine=found, settings=config.build, log=log,
                                 stored_base=stored_base)

    async def recompress(image: BuiltLike, log: LogFn) -> BuiltLike:
        return await recompress_image(store, image.repository, image.tag, config.build.compression, log)

    metrics = Metrics(Activity(store.activity))
    offload = Offload()

    async def on_build_done(finished: Build, seconds: float) -> None:
        metrics.build_done((finished.outcome or "built") if finished.state == "succeeded" else "failed", seconds)
        await upstream.on_build_done(finished)

    ensurer = Ensurer(
        store=store, resolver=BaseDigestResolver(store.base_digests, resolvers, float(config.resolve.base_digest_ttl)),
        builder=build, recipe_version=RECIPE_VERSION,
        variant_bases={name: v.base_image for name, v in config.variants.items()},
        concurrency=config.build.concurrency, sources=[upstream] if upstream.pull_upstreams else [],
        on_build_done=on_build_done, track_tags=True, compression=config.build.compression, recompress=recompress,
        offload=offload,
    )
    metrics.bind_queue(ensurer.queue_depth, ensurer.running)
    metrics.watch_upstream(upstream)
    environments = Environments(store.environments)
    # A new wheel goes to the push upstreams at once: other daemons may build with it before
    # anything that pins it is built here.
    wheels = Wheels(store, on_added=upstream.push_wheel if upstream.push_upstreams else None)
    definitions = Definitions(environments, offload)
    pipelines = PipelineRuns(StepRunner(store, engine.get, ensurer, definitions, pull=upstream.try_pull_step,
                                       push=upstream.push_step, settings=config.pipeline))
    return Daemon(config, store, engine, resolvers, ensurer, environments, definitions, upstream,
                  puller, uploads, metrics, offload, wheels, pipelines)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Start-up work and background loops; at cleanup the upstream tier stops and the store closes."""
    parts = app[DAEMON]
    engine = await parts.engine.state()  # detected at start: the serve banner and the log say which
    log.info("build %s", engine.describe())
    await parts.ensurer.start()
    await parts.upstream.pushes.resume(parts.upstream.upstreams)
    loops = [asyncio.create_task(_expire_uploads(parts)), asyncio.create_task(_flush_last_used(parts))]
    if parts.config.gc.interval and parts.store.owner:
        loops.append(asyncio.create_task(_gc_every_interval(parts)))
    yield
    for task in loops:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    parts.offload.close()
    await parts.upstream.aclose()
    await parts.puller.aclose()
    await parts.engine.close()
    await parts.metrics.activity.flush()
    await parts.store.close()


async def _stop_builds(app: web.Application) -> None:
    """On shutdown, before any cleanup: stop builds and flush what they and reads batched."""
    await app[DAEMON].pipelines.close()
    await app[DAEMON].ensurer.close()
    await app[DAEMON].store.flush_reads()


async def _expire_uploads(parts: Daemon) -> None:
    ttl = float(parts.config.registry.upload_session_ttl)
    while True:
        await parts.store.expire_uploads(ttl, parts.uploads.busy)
        await parts.uploads.forget_ended(parts.store)
        await asyncio.sleep(min(60.0, max(ttl / 4, 1.0)))


async def _gc_every_interval(parts: Daemon) -> None:
    """``[gc] interval``: gc in the background with the ``[gc]`` settings, so the store never
    stays over ``max_bytes`` for longer than one interval. A run that fails is logged and the
    next one comes on time; runs never overlap (the store runs one gc at a time)."""
    settings = parts.config.gc
    while True:
        await asyncio.sleep(settings.interval)
        try:
            report = await collect(parts, keep_days=settings.keep_days or None, max_bytes=settings.max_bytes or None,
                                   grace=float(settings.grace))
        except Exception:
            log.exception("interval gc failed; the next run is in %ss", settings.interval)
            continue
        log.info("interval gc: freed %s bytes; evicted %s", report.bytes_freed,
                 ", ".join(f"{e['key']} ({e['bytes']} bytes)" for e in report.evicted) or "nothing")


async def _flush_last_used(parts: Daemon) -> None:
    """Use times batched in memory (image hits, blob reads) reach the store every FLUSH_INTERVAL,
    best effort: a read never writes, so a full disk only delays them."""
    while True:
        await asyncio.sleep(FLUSH_INTERVAL)
        await parts.ensurer.flush_last_used()
        await parts.metrics.activity.flush()
        await parts.store.flush_reads()
