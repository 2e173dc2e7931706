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

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        source.pushes.resume(upstreams)
        yield
        await source.aclose()
        puller = _app.get(BASE_PULLER)
        if puller is not None:
            await puller.aclose()

    app.cleanup_ctx.append(lifecycle)
    return source


def base_resolver(app: web.Application) -> BasePuller:
    """Pull-through resolver for base images (mirrors first, then the origin)."""
    puller = BasePuller(app["store"], list(getattr(app["config"], "upstreams", None) or []))
    app[BASE_PULLER] = puller
    return puller
