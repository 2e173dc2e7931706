"""Pull-through for base images: origin (or mirror) → the daemon's own registry.

A definition names its base as a normal reference (``ubuntu:22.04``,
``registry.example.com/ml/cuda:12``). The image key needs that tag resolved to a digest, and the
builder needs the image's bytes. Fetching both through the daemon means a team's runners ask the
origin once per TTL, keep the base in their store for offline rebuilds, and can point at a
mirror when the origin is far away or rate-limited.

Locally a base lives at its own name with the registry host in front (``:`` becomes ``-``, which
repository names cannot contain): ``docker.io/library/ubuntu:22.04``,
``127.0.0.1-5000/busybox:latest``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from envcache.errors import EnvcacheError, InvalidInput
from envcache.oci import DOCKER_HUB_HOSTS, ImageRef, RegistryLogin, config_digest, parse_reference
from envcache.upstream.client import RegistryClient, Timeouts
from envcache.upstream.config import Upstream
from envcache.upstream.copy import pull_image

if TYPE_CHECKING:
    from envcache.store import Store


def origin_upstreams(ref: ImageRef, upstreams: Sequence[Upstream], login: RegistryLogin | None = None) -> list[Upstream]:
    """The origin registry of ``ref`` as Upstreams to try in order, with credentials/TLS if one is
    configured.

    ``login`` (the definition's own credentials for that registry) replaces the configured
    credentials; the configured entry still gives the TLS settings. Without either, the request
    is anonymous — which is how a registered environment (stored without its password) is pulled
    unless the daemon's config has an ``[[upstreams]]`` entry for the host. An unconfigured
    loopback registry is tried as Docker tries one, HTTPS first, then plain HTTP (envcache
    verifies the HTTPS certificate against the system's trust, where Docker would not).
    """
    configured = next((u for u in upstreams
                       if u.host == ref.host or (ref.host == "docker.io" and u.host in DOCKER_HUB_HOSTS)), None)
    if configured is not None:
        origins = [configured]
    elif ref.host == "docker.io":
        origins = [Upstream(url="https://registry-1.docker.io", prefix="", mode="pull")]
    else:
        schemes = ("https", "http") if ref.is_loopback else ("https",)
        origins = [Upstream(url=f"{scheme}://{ref.host}", prefix="", mode="pull") for scheme in schemes]
    login = login.for_host(ref.host) if login is not None else None
    if login is None:
        return origins
    return [replace(origin, username=login.username, password=login.password, token=None) for origin in origins]


@dataclass
class BaseImage:
    reference: str
    digest: str
    local_repository: str
    source: str           # the registry the bytes came from
    bytes_copied: int


class BasePuller:
    """Fetches base images into the store; also usable as a ``BaseDigestResolver`` resolver."""

    def __init__(self, store: Store, upstreams: Sequence[Upstream],
                 client_for: Callable[[Upstream], RegistryClient] | None = None) -> None:
        self.store = store
        self.upstreams = list(upstreams)
        # One client per upstream *with its credentials*: a client caches tokens, which must
        # never serve a request made with another login.
        self._own: dict[Upstream, RegistryClient] = {}
        self._client_for = client_for
        self.__name__ = "upstream pull-through"   # how BaseDigestResolver names us in errors

    def _client(self, upstream: Upstream) -> RegistryClient:
        if self._client_for is not None:
            return self._client_for(upstream)
        if upstream not in self._own:
            self._own[upstream] = RegistryClient(upstream)
        return self._own[upstream]

    def sources_for(self, ref: ImageRef, login: RegistryLogin | None = None) -> list[Upstream]:
        """Mirrors configured for the origin first, then the origin itself (with ``login``)."""
        mirrors = [replace(u, prefix="") for u in self.upstreams
                   if u.can_pull and (ref.host in u.mirror_for or (ref.host == "docker.io" and
                                                                   DOCKER_HUB_HOSTS & set(u.mirror_for)))]
        return mirrors + origin_upstreams(ref, self.upstreams, login)

    async def pull(self, reference: str, login: RegistryLogin | None = None) -> BaseImage:
        """Fetch ``reference`` (mirror, then origin) into the store, tagged under its own name."""
        ref = parse_reference(reference)
        errors: list[str] = []
        for upstream in self.sources_for(ref, login):
            try:
                stats = await pull_image(self._client(upstream), ref.path, ref.ref, self.store,
                                         ref.local_repository, ref.tag)
            except EnvcacheError as exc:
                errors.append(str(exc))
                continue
            if stats is None:
                errors.append(f"{upstream.url}/{ref.path}:{ref.ref} not found")
                continue
            return BaseImage(str(ref), stats.digest, ref.local_repository, upstream.url, stats.bytes_copied)
        raise BaseNotAvailable(f"cannot fetch base image {ref}: " + "; ".join(errors))

    async def __call__(self, reference: str, *, login: RegistryLogin | None = None, **_: object) -> str | None:
        """Resolver protocol: the base's *config* digest (the engine's image id) after caching it.

        Image keys use the config digest on every machine (a builder knows its base by engine id,
        a pull-only laptop by registry content), so this must answer the same kind of digest as
        the service's other resolvers: ``envcache.oci.config_digest`` picks it for all of them.
        """
        if reference == "scratch":
            return None
        pulled = await self.pull(reference, login)
        found = await self.store.config_digest(pulled.local_repository, pulled.digest)
        return found[1] if found else None

    async def aclose(self) -> None:
        for client in self._own.values():
            await client.close()
        self._own.clear()


async def remote_registry(reference: str, *, login: RegistryLogin | None = None, **_: object) -> str | None:
    """A base resolver: the config digest of ``reference`` asked of its own registry, with the
    definition's ``login`` if any (configured upstreams and mirrors are the pull-through's job)."""
    ref = parse_reference(reference)
    *earlier, last = origin_upstreams(ref, [], login)
    for origin in earlier:
        try:
            return await _remote_config_digest(origin, ref)
        except EnvcacheError:
            continue  # an unconfigured loopback registry that speaks plain HTTP: try it so
    return await _remote_config_digest(last, ref)


async def _remote_config_digest(origin: Upstream, ref: ImageRef) -> str | None:
    async with RegistryClient(origin, timeouts=Timeouts(connect=3.0, read=10.0)) as client:
        manifest = await client.get_manifest(ref.path, ref.ref)
        if manifest is None:
            return None

        async def child(digest: str) -> bytes | None:
            found = await client.get_manifest(ref.path, digest)
            return found.body if found else None

        return await config_digest(manifest.body, child)


def stored_copy(store: Store) -> Callable[[str], Awaitable[tuple[str, str] | None]]:
    """``reference`` → (repository, manifest digest) of its pulled-through copy in ``store``, or None.

    What the builder is given to load a base the engine lacks from the store instead of letting
    the engine pull it from the origin (it needs the daemon's credentials, TLS settings and
    mirrors for that). An index is narrowed to one platform by ``config_digest``'s own choice, so
    the image loaded is exactly the one whose config digest went into the image key.
    """
    async def stored(reference: str) -> tuple[str, str] | None:
        try:
            ref = parse_reference(reference)
        except InvalidInput:
            return None
        repository = ref.local_repository
        found = await store.config_digest(repository, ref.ref)
        return (repository, found[0]) if found else None

    return stored


class BaseNotAvailable(EnvcacheError):
    """Neither a mirror nor the origin could provide the base image."""

    http_status = 502
