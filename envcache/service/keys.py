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
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import xxhash

from envcache.errors import EnvcacheError
from envcache.definition.dockerfile import dockerfile_base
from envcache.oci import normalise_reference
from envcache.store.schema import BASE_DIGESTS as _TABLE

if TYPE_CHECKING:
    from sqlite_utils import Database

    from envcache.definition.model import Definition

#: A resolver returns the digest of a reference, or None when it does not know the reference.
Resolver = Callable[[str], Awaitable[str | None]]

_DIGEST_RE = re.compile(r"@(sha256:[0-9a-f]{64})$")


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


def base_reference(defn: Definition, variant_base: str | None) -> str | None:
    """The base image a (variant-applied) definition builds on.

    A Dockerfile's first ``FROM`` wins over ``docker.base_image`` because that is what the
    engine will actually start from; the daemon's per-variant default applies when the
    definition names neither.
    """
    docker = defn.docker
    if docker.base_dockerfile:
        base = dockerfile_base(docker.base_dockerfile)
        if base is not None:
            return "scratch" if base.lower() == "scratch" else normalise_reference(base)
    if docker.base_image:
        return normalise_reference(docker.base_image)
    return normalise_reference(variant_base) if variant_base else None


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
