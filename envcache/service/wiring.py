"""Connects the ensure machinery to the build side: the engine, the base resolvers, the builder.

Kept apart from ``ensure.py`` so that the machinery depends only on callables, and apart from
``api.py`` so the HTTP layer does not know how images are built. (The upstream tier plugs in
the same way from its own side, :mod:`envcache.upstream.wiring`.) Engine detection is done
once, lazily, on the first build or base lookup: a daemon used only for lookups never touches
it, and the engine's heavy client library is only imported then.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

from aiohttp import web

from envcache.builder import resolve_variant
from envcache.builder.plan import RECIPE_VERSION
from envcache.errors import EnvcacheError
from envcache.oci import config_digest, parse_reference
from envcache.service.keys import Resolver
from envcache.upstream.base import origin_upstream, stored_copy

if TYPE_CHECKING:
    from envcache.builder.builder import BuiltImage
    from envcache.builder.engines import Engine
    from envcache.service.config import Config
    from envcache.service.ensure import Builder, LogFn, Prepared


class NoEngine(EnvcacheError):
    http_status = 503


@functools.cache
def resolve_auto_variant() -> str:
    """``auto`` → the daemon host's variant (GPU present or not); the host does not change."""
    return resolve_variant("auto")


def recipe_version() -> str:
    """The build recipe version, part of every image key (a new recipe → new images)."""
    return str(RECIPE_VERSION)


class EngineHandle:
    """The daemon's engine, detected on first use; None when no engine is available."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._engine: Engine | None = None
        self._detected = False
        self._lock = asyncio.Lock()

    async def get(self) -> Engine | None:
        async with self._lock:
            if not self._detected:
                from envcache.builder.engines import detect_engine

                self._engine = detect_engine(self._config)
                self._detected = True
        return self._engine


ENGINE = web.AppKey("envcache_engine", EngineHandle)


def _own_hosts(config: Config) -> set[str]:
    port = config.server.port
    return {f"{config.server.host}:{port}", f"127.0.0.1:{port}", f"localhost:{port}"}


def make_resolvers(app: web.Application) -> list[Resolver]:
    """Base-digest resolvers in order: envcache's own registry, the local engine, the remote registry.

    All three answer the same value for the same image (its config digest), so the order only
    decides which is asked first, never which key comes out.
    """
    store, config, handle = app["store"], app["config"], app[ENGINE]
    own = _own_hosts(config)

    async def own_registry(reference: str) -> str | None:
        # Any loopback host:port counts: in-process daemons listen on a port the config never
        # saw, and a loopback reference that names content we hold is ours to answer.
        ref = parse_reference(reference)
        if ref.host not in own and ref.host.rsplit(":", 1)[0] not in ("127.0.0.1", "localhost", "[::1]"):
            return None
        found = await store.config_digest(ref.path, ref.ref)
        return found[1] if found else None

    async def local_engine(reference: str) -> str | None:
        # What a build will start from when the image is already in the engine (no pull).
        engine = await handle.get()
        if engine is None:
            return None
        info = await engine.inspect(reference)
        return info.id if info else None

    async def remote_registry(reference: str) -> str | None:
        from envcache.upstream.client import RegistryClient, Timeouts

        ref = parse_reference(reference)
        # The image's own registry, anonymously (configured upstreams are asked before this).
        async with RegistryClient(origin_upstream(ref, []), timeouts=Timeouts(connect=3.0, read=10.0)) as client:
            manifest = await client.get_manifest(ref.path, ref.ref)
            if manifest is None:
                return None

            async def child(digest: str) -> bytes | None:
                found = await client.get_manifest(ref.path, digest)
                return found.body if found else None

            return await config_digest(manifest.body, child)

    return [own_registry, local_engine, remote_registry]


def make_builder(app: web.Application) -> Builder:
    """The ensure machinery's builder: ``envcache.builder.build_image`` on the detected engine, with
    bases the engine lacks loaded from their pulled-through copy in the store."""
    store, config, handle = app["store"], app["config"], app[ENGINE]
    stored_base = stored_copy(store)

    async def builder(prepared: Prepared, log: LogFn) -> BuiltImage:
        from envcache.builder.builder import build_image

        engine = await handle.get()
        if engine is None:
            raise NoEngine(
                "no container engine available to build this image: install Docker (and start dockerd) or "
                "buildah, or set [build] engine / docker_host in the daemon config"
            )
        return await build_image(prepared.definition, prepared.variant, store=store, engine=engine, config=config,
                                 image_key=prepared.key, log=log, base_digest=prepared.base_digest,
                                 stored_base=stored_base)

    return builder
