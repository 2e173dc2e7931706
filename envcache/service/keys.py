"""Image keys, and the base-image digest resolution they depend on.

The base digest is the image's *config* digest (what engines call the image id), whichever way
it is found — engine, envcache's registry, a remote registry — so a daemon that builds and one
that only pulls compute the same key.

An image key names *what was built*, not what was asked for: the spec hash says which
environment, but the same definition on top of a base tag that has moved (``ubuntu:22.04``
re-published with security fixes) is a different image. So the key also carries the base
image's resolved digest and the build recipe version; a moved tag or a new recipe gives a new
key and therefore a fresh build, never a stale hit.

Resolving a tag costs a registry round-trip, which would ruin the hit path's latency, so
results are cached in memory for ``resolve.base_digest_ttl`` seconds. The last value ever seen
is also kept in SQLite, so a daemon whose upstream registry is unreachable (offline laptop, CI
without network) still answers lookups for images it built before.
"""

from __future__ import annotations

import asyncio
import json
import platform
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import xxhash

from envcache.errors import EnvcacheError
from envcache.definition.canonical import canonical_image_ref
from envcache.store.schema import BASE_DIGESTS as _TABLE
from envcache.upstream.client import INDEX_TYPES

if TYPE_CHECKING:
    from sqlite_utils import Database

    from envcache.definition.model import Definition
    from envcache.store import Store

#: A resolver returns the digest of a reference, or None when it does not know the reference.
Resolver = Callable[[str], Awaitable[str | None]]

_DIGEST_RE = re.compile(r"@(sha256:[0-9a-f]{64})$")
_FROM_RE = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", re.IGNORECASE | re.MULTILINE)


class BaseImageUnresolvable(EnvcacheError):
    """No resolver knows the base image and there is no last-known digest to fall back on."""

    exit_code = 1
    http_status = 502


def image_key(spec_hash: str, variant: str, base_digest: str, recipe_version: str | int) -> str:
    """The key an image is filed under: xxh3-128 over the four things that decide its content.

    JSON of a list (not string concatenation) so no two different tuples can serialise alike.
    """
    payload = json.dumps([spec_hash, variant, base_digest, str(recipe_version)], separators=(",", ":"))
    return xxhash.xxh3_128_hexdigest(payload.encode())


def normalise_reference(ref: str) -> str:
    """``ubuntu`` → ``docker.io/library/ubuntu:latest``, the same normalisation the canonical form uses.

    A ``FROM`` that is not a plain reference (``FROM $BASE``) is passed on as written: no
    resolver knows it, so the request ends in :class:`BaseImageUnresolvable`, a clear 502.
    """
    try:
        return canonical_image_ref(ref)
    except ValueError:
        return ref.strip()


def base_reference(defn: Definition, variant_base: str | None) -> str | None:
    """The base image a (variant-applied) definition builds on.

    A Dockerfile's first ``FROM`` wins over ``docker.base_image`` because that is what the
    engine will actually start from; the daemon's per-variant default applies when the
    definition names neither.
    """
    docker = defn.docker
    if docker.base_dockerfile:
        match = _FROM_RE.search(docker.base_dockerfile)
        if match and match.group(1).lower() != "scratch":
            return normalise_reference(match.group(1))
        if match:
            return "scratch"
    if docker.base_image:
        return normalise_reference(docker.base_image)
    return normalise_reference(variant_base) if variant_base else None


def _host_platform() -> tuple[str, str]:
    machine = platform.machine().lower()
    return "linux", {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


async def config_digest(body: bytes, fetch: Callable[[str], Awaitable[bytes | None]]) -> str | None:
    """The image's config digest from its manifest (through an index, for the host platform).

    The config digest is what an engine calls the image id, and it does not depend on how the
    layers were compressed: every machine — one that builds, one that only pulls — computes
    the same image key from it. Every resolver answers through this function.
    """
    doc = json.loads(body)
    if doc.get("mediaType") in INDEX_TYPES or "manifests" in doc:
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


async def stored_config_digest(store: Store, repository: str, ref: str) -> tuple[str, str] | None:
    """(manifest digest, config digest) of ``repository:ref`` in the daemon's store, or None.

    The manifest digest is the platform entry :func:`config_digest` picked when ``ref`` names
    an index, so an image loaded by it is exactly the one whose config digest keys the image.
    """
    manifest = store.get_manifest(repository, ref)
    if manifest is None:
        return None
    chosen = manifest.digest

    async def child(digest: str) -> bytes | None:
        nonlocal chosen
        chosen = digest
        found = store.get_manifest(repository, digest)
        return found.body if found else None

    digest = await config_digest(manifest.body, child)
    return (chosen, digest) if digest else None


@dataclass
class _Cached:
    digest: str
    expires: float


class BaseDigestResolver:
    """Tag → digest with a TTL cache, a chain of resolvers, and a persisted last-known value.

    ``resolvers`` are tried in order (the daemon's own registry, the local engine, remote
    registries); the first that answers wins. Concurrent resolutions of one reference share
    one lookup so a burst of ensures does not fan out into a burst of registry requests.
    """

    def __init__(self, db: Database, resolvers: Sequence[Resolver], ttl: float) -> None:
        self._db = db
        self._resolvers = list(resolvers)
        self._ttl = ttl
        self._cache: dict[str, _Cached] = {}
        self._inflight: dict[str, asyncio.Future[str]] = {}

    def cached(self, reference: str) -> str | None:
        """The digest if it is known and fresh — the synchronous fast path of every lookup."""
        if reference == "scratch":
            return "scratch"
        entry = self._cache.get(reference)
        return entry.digest if entry and entry.expires > time.monotonic() else None

    async def resolve(self, reference: str) -> str:
        """The base digest for ``reference``; falls back to the last known value when offline."""
        hit = self.cached(reference)
        if hit is not None:
            return hit
        pending = self._inflight.get(reference)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[reference] = future
        try:
            digest = await self._resolve_uncached(reference)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        else:
            future.set_result(digest)
            return digest
        finally:
            del self._inflight[reference]

    async def _resolve_uncached(self, reference: str) -> str:
        errors: list[str] = []
        for resolver in self._resolvers:
            try:
                digest = await resolver(reference)
            except Exception as exc:  # an unreachable registry is expected: fall through
                errors.append(f"{getattr(resolver, '__name__', 'resolver')}: {exc}")
                continue
            if digest:
                self._remember(reference, digest)
                return digest
        row = self._last_known(reference)
        if row is not None:
            # Cache the fallback briefly too, so an offline daemon does not retry on every hit.
            self._cache[reference] = _Cached(row, time.monotonic() + min(self._ttl, 60.0))
            return row
        detail = f" ({'; '.join(errors)})" if errors else ""
        raise BaseImageUnresolvable(
            f"cannot resolve base image {reference}: not in envcache's registry, not in the local engine, "
            f"and no registry answered{detail}. Load or push the base image first."
        )

    def _remember(self, reference: str, digest: str) -> None:
        # A reference pinned by digest names immutable content: its answer never expires.
        ttl = float("inf") if _DIGEST_RE.search(reference) else self._ttl
        self._cache[reference] = _Cached(digest, time.monotonic() + ttl)
        self._db[_TABLE].upsert({"reference": reference, "digest": digest, "resolved": time.time()}, pk="reference")

    def _last_known(self, reference: str) -> str | None:
        rows = list(self._db.query(f"select digest from {_TABLE} where reference = ?", [reference]))
        return rows[0]["digest"] if rows else None
