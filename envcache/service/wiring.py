"""Connects the ensure machinery to the real parts: the store, the engine, remote registries.

Kept apart from ``ensure.py`` so that the machinery depends only on callables, and apart from
``api.py`` so the HTTP layer does not know how images are built. Engine detection is done once,
lazily, on the first build or base lookup: a daemon used only for lookups never touches it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import platform
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from envcache.errors import EnvcacheError
from envcache.service.keys import Resolver


class NoEngine(EnvcacheError):
    http_status = 503


@functools.cache
def resolve_auto_variant() -> str:
    """``auto`` → the daemon host's variant (GPU present or not); the host does not change."""
    from envcache.build.variants import resolve_variant

    return resolve_variant("auto")


def recipe_version() -> str:
    """The build recipe version, part of every image key (a new recipe → new images)."""
    from envcache import build

    return str(build.RECIPE_VERSION)


class EngineHandle:
    """The daemon's engine, detected on first use; None when no engine is available."""

    def __init__(self, config: Any) -> None:
        self._config = config
        self._engine: Any = None
        self._detected = False
        self._lock = asyncio.Lock()

    async def get(self) -> Any:
        async with self._lock:
            if not self._detected:
                from envcache.build import detect_engine

                engine = detect_engine(self._config)
                self._engine = await engine if asyncio.iscoroutine(engine) else engine
                self._detected = True
        return self._engine


ENGINE = web.AppKey("envcache_engine", EngineHandle)


def _own_hosts(config: Any) -> set[str]:
    port = config.server.port
    return {f"{config.server.host}:{port}", f"127.0.0.1:{port}", f"localhost:{port}"}


def _split(reference: str) -> tuple[str, str, str]:
    """``host/repo:tag`` or ``host/repo@digest`` → (host, repo, tag-or-digest); already normalised."""
    host, _, rest = reference.partition("/")
    if "@" in rest:
        repo, _, ref = rest.partition("@")
        return host, repo.rsplit(":", 1)[0] if ":" in repo.rsplit("/", 1)[-1] else repo, ref
    repo, _, tag = rest.rpartition(":")
    return host, repo, tag


_INDEX_TYPES = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}


def _host_platform() -> tuple[str, str]:
    machine = platform.machine().lower()
    return "linux", {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


async def config_digest(body: bytes, fetch: Callable[[str], Awaitable[bytes | None]]) -> str | None:
    """The image's config digest from its manifest (through an index, for the host platform).

    The config digest is what an engine calls the image id, and it does not depend on how the
    layers were compressed: every machine — one that builds, one that only pulls — computes
    the same image key from it (lead decision, 19:02).
    """
    doc = json.loads(body)
    if doc.get("mediaType") in _INDEX_TYPES or "manifests" in doc:
        children = [m for m in doc.get("manifests", []) if isinstance(m, dict) and m.get("digest")]
        wanted = _host_platform()

        def platform_of(m: dict[str, Any]) -> tuple[str, str]:
            p = m.get("platform") or {}
            return p.get("os", ""), p.get("architecture", "")

        chosen = next((m for m in children if platform_of(m) == wanted), None) or \
            next((m for m in children if platform_of(m) == ("linux", "amd64")), None) or \
            (children[0] if children else None)
        if chosen is None:
            return None
        child = await fetch(chosen["digest"])
        if child is None:
            return None
        doc = json.loads(child)
    config = doc.get("config") or {}
    return config.get("digest")


def make_resolvers(app: web.Application) -> list[Resolver]:
    """Base-digest resolvers in order: envcache's own registry, the local engine, the remote registry.

    All three answer the same value for the same image (its config digest), so the order only
    decides which is asked first, never which key comes out.
    """
    store, config = app["store"], app["config"]
    handle = app.get(ENGINE)
    if handle is None:
        handle = app[ENGINE] = EngineHandle(config)
    own = _own_hosts(config)

    async def own_registry(reference: str) -> str | None:
        # Any loopback host:port counts: in-process daemons listen on a port the config never
        # saw, and a loopback reference that names content we hold is ours to answer.
        host, repo, tag = _split(reference)
        if host not in own and host.rsplit(":", 1)[0] not in ("127.0.0.1", "localhost", "[::1]"):
            return None
        manifest = store.get_manifest(repo, tag)
        if manifest is None:
            return None

        async def child(digest: str) -> bytes | None:
            found = store.get_manifest(repo, digest)
            return found.body if found else None

        return await config_digest(manifest.body, child)

    async def local_engine(reference: str) -> str | None:
        # What a build will start from when the image is already in the engine (no pull).
        engine = await handle.get()
        if engine is None:
            return None
        info = await engine.inspect(reference)
        return info.id if info else None

    async def remote_registry(reference: str) -> str | None:
        from envcache.upstream.client import RegistryClient, Timeouts
        from envcache.upstream.config import Upstream

        host, repo, tag = _split(reference)
        registry = "registry-1.docker.io" if host == "docker.io" else host
        scheme = "http" if registry.split(":")[0] in ("127.0.0.1", "localhost") else "https"
        async with RegistryClient(Upstream(url=f"{scheme}://{registry}"), timeouts=Timeouts(connect=3.0, read=10.0)) as client:
            manifest = await client.get_manifest(repo, tag)
            if manifest is None:
                return None

            async def child(digest: str) -> bytes | None:
                found = await client.get_manifest(repo, digest)
                return found.body if found else None

            return await config_digest(manifest.body, child)

    return [own_registry, local_engine, remote_registry]


def make_builder(app: web.Application) -> Any:
    """The ensure machinery's builder: ``envcache.build.build_image`` on the detected engine."""
    store, config = app["store"], app["config"]

    async def builder(prepared: Any, log: Any) -> Any:
        from envcache.build import build_image

        engine = await app[ENGINE].get()
        if engine is None:
            raise NoEngine(
                "no container engine available to build this image: install Docker (and start dockerd) or "
                "buildah, or set [build] engine / docker_host in the daemon config"
            )
        return await build_image(prepared.definition, prepared.variant, store=store, engine=engine, config=config,
                                 image_key=prepared.key, log=log, base_digest=prepared.base_digest)

    return builder
