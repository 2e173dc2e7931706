"""Which base image a definition builds on, and the digest that base resolves to.

The base digest is the image's *config* digest (what engines call the image id), whichever way
it is found — envcache's own registry, the local engine, a pull through the upstream tier, the
image's own registry — so a daemon that builds and one that only pulls compute the same image
key (:func:`envcache.builder.keys.image_key`): a moved tag or a new recipe gives a new key and
therefore a fresh build, never a stale hit.

Resolving a tag costs a registry round-trip, which would ruin the hit path's latency, so
results are cached in memory for ``resolve.base_digest_ttl`` seconds. The last value ever seen
is also kept in the store, so a daemon whose upstream registry is unreachable (offline laptop,
CI without network) still answers lookups for images it built before.

The resolvers themselves are small factories; the composition root (:mod:`envcache.service.app`)
lists them in the order they are asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from envcache.errors import EnvcacheError
from envcache.oci import RegistryLogin, parse_reference
from envcache.store import InsufficientStorage, Store
from envcache.store.interfaces import BaseDigests

#: A resolver returns the digest of a reference, or None when it does not know the reference.
#: It is called as ``resolver(reference, name=…, login=…)``: ``reference`` in its normal spelling,
#: ``name`` as the definition writes it (what the engine is asked, so a short name resolves the way
#: the engine resolves it), ``login`` the definition's credentials for the base's registry.
Resolver = Callable[..., Awaitable[str | None]]

_DIGEST_RE = re.compile(r"@(sha256:[0-9a-f]{64})\Z")  # \Z: "$" also matches before a final newline


class BaseImageUnresolvable(EnvcacheError):
    """No resolver knows the base image and there is no last-known digest to fall back on."""

    exit_code = 1
    http_status = 502


def own_registry(store: Store, own_hosts: set[str]) -> Resolver:
    """Bases in envcache's own registry: pushed there (``docker push`` to the daemon) or built."""

    async def own_registry(reference: str, **_: object) -> str | None:
        # Any loopback host:port counts: in-process daemons listen on a port the config never
        # saw, and a loopback reference that names content we hold is ours to answer.
        ref = parse_reference(reference)
        if ref.host not in own_hosts and not ref.is_loopback:
            return None
        found = await store.config_digest(ref.path, ref.ref)
        return found[1] if found else None

    return own_registry


def local_engine(inspect: Callable[[str], Awaitable[str | None]]) -> Resolver:
    """What a build will start from when the image is already in the engine (no pull):
    ``inspect(name)`` answers the engine's image id, or None. The engine is asked for the name as
    the definition writes it: each engine resolves a short name its own way (Docker reads
    ``pybase:bookworm`` as ``docker.io/library/pybase:bookworm``, buildah finds it as
    ``localhost/pybase:bookworm``), and the build's ``FROM`` will be resolved the same way."""

    async def local_engine(reference: str, *, name: str | None = None, **_: object) -> str | None:
        return await inspect(name or reference)

    return local_engine


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

    def __init__(self, last_known: BaseDigests, resolvers: Sequence[Resolver], ttl: float) -> None:
        self._last_known = last_known
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

    async def resolve(self, reference: str, *, name: str | None = None, login: RegistryLogin | None = None) -> str:
        """The base digest for ``reference``; falls back to the last known value when offline.

        ``name`` and ``login`` are passed on to the resolvers (see :data:`Resolver`); the cache is
        keyed by ``reference`` alone, since a digest does not depend on who asked for it."""
        hit = self.cached(reference)
        if hit is not None:
            return hit
        pending = self._inflight.get(reference)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[reference] = future
        try:
            digest = await self._resolve_uncached(reference, name, login)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        else:
            future.set_result(digest)
            return digest
        finally:
            del self._inflight[reference]

    async def _resolve_uncached(self, reference: str, name: str | None, login: RegistryLogin | None) -> str:
        errors: list[str] = []
        for resolver in self._resolvers:
            try:
                digest = await resolver(reference, name=name, login=login)
            except Exception as exc:  # an unreachable registry is expected: fall through
                errors.append(f"{getattr(resolver, '__name__', 'resolver')}: {exc}")
                continue
            if digest:
                await self._remember(reference, digest)
                return digest
        row = await self._last_known.get(reference)
        if row is not None:
            # Cache the fallback briefly too, so an offline daemon does not retry on every hit.
            self._cache[reference] = _Cached(row, time.monotonic() + min(self._ttl, 60.0))
            return row
        detail = f" ({'; '.join(errors)})" if errors else ""
        raise BaseImageUnresolvable(
            f"cannot resolve base image {reference}: not in envcache's registry, not in the local engine, "
            f"and no registry answered{detail}. Load or push the base image first."
        )

    async def _remember(self, reference: str, digest: str) -> None:
        # A reference pinned by digest names immutable content: its answer never expires.
        ttl = float("inf") if _DIGEST_RE.search(reference) else self._ttl
        self._cache[reference] = _Cached(digest, time.monotonic() + ttl)
        # The stored copy is only the offline fallback: a full disk must not fail a lookup.
        with contextlib.suppress(InsufficientStorage):
            await self._last_known.put(reference, digest, time.time())
