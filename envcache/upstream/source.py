"""The upstream tier as the daemon sees it: a source tried before building, and a push hook.

``UpstreamSource`` is handed to the daemon's ensure machinery (by the composition root,
:mod:`envcache.service.app`) as one of its sources — called with the request (anything with
``key`` and ``variant``) and the build log — and as its ``on_build_done`` hook (push what was
just built). Upstream trouble — unreachable, stalled,
refusing, or answering garbage — is logged to the build log and kept in ``last_errors``; it
never fails the ensure: the daemon then builds, as it would with no upstream at all.

Naming: locally an image is ``envcache/env:<key>-<variant>``, its lock ``envcache/lock:<key>-<variant>``,
a stage image ``envcache/stage:<chain key>`` and a private wheel ``envcache/wheel:<sha256 hex>``; on
an upstream they live under the upstream's prefix (``<prefix>/env``, ``<prefix>/lock``,
``<prefix>/stage``, ``<prefix>/wheel``) with the same tags, so any OCI client can list them. The lock
travels on its own: a daemon that cannot pull an image (gone from the upstream, or never pushed) but
finds its lock builds exactly that lock.

Wheels travel with what needs them: an image is pushed after the wheels it pins, and before a
request is pulled or built, the wheels its definition pins that the store lacks are pulled, so a
build serves them from the store (however unreachable the daemon whose URL a definition names).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from envcache.definition.canonical import pinned_wheels, wheel_digests
from envcache.errors import EnvcacheError, InvalidInput
from envcache.oci import (
    ENV_REPOSITORY, LOCK_REPOSITORY, STAGE_REPOSITORY, WHEEL_REPOSITORY, image_tag, layer_compression,
    parse_image_tag, parse_manifest,
)
from envcache.progress import Ticker, size
from envcache.upstream.client import RegistryClient, Timeouts
from envcache.upstream.config import Upstream
from envcache.upstream.copy import image_size, pull_image
from envcache.upstream.push import PushQueue, push_status
from envcache.wire import STEP_REPOSITORY

if TYPE_CHECKING:
    from envcache.definition.model import Definition
    from envcache.store import Store

log = logging.getLogger(__name__)

ENV_REPO = ENV_REPOSITORY
STAGE_REPO = STAGE_REPOSITORY
WHEEL_REPO = WHEEL_REPOSITORY
LogFn = Callable[[str], None]
#: Reads the lock of a stored image: (store, image tag, repository, manifest digest) → lock document.
LockReader = Callable[["Store", str, str, str], Awaitable[dict]]


class Wanted(Protocol):
    """What the source reads of a request: the image key, the variant, and the definition as
    built for it (for the wheels it pins)."""

    key: str
    variant: str
    definition: Definition


class Finished(Protocol):
    """What the push hook reads of a finished build."""

    state: str
    outcome: str | None
    image: Any  # has ``repository`` and ``tag``


@dataclass
class PulledImage:
    """What the ensure machinery records for an image obtained by pull (``BuiltLike``)."""

    repository: str
    tag: str
    manifest_digest: str
    size: int
    lock: dict = field(default_factory=dict)
    upstream: str = ""
    stats: dict = field(default_factory=dict)
    compression: str = ""      # of its layers, as pulled (``envcache.oci.layer_compression``)


class UpstreamSource:
    """Pull on a miss (whole image, else deepest shared stage) and push after a build."""

    def __init__(self, store: Store, upstreams: Sequence[Upstream], *, timeouts: Timeouts | None = None,
                 stage_keys: Callable[[Wanted, LogFn], Awaitable[list[str]]] | None = None,
                 lock_reader: LockReader | None = None, push_attempts: int = 5,
                 push_backoff: float = 1.0) -> None:
        self.store = store
        self.upstreams = list(upstreams)
        self.timeouts = timeouts
        # Chain keys of the request's stages, shallowest first (supplied by the build side,
        # which owns the root key formula); without it only whole images are pulled.
        self.stage_keys = stage_keys
        # Reads the lock of a pulled image (its lock artifact, else the files in its layers); the
        # build side owns that format.
        self.lock_reader = lock_reader
        self._clients: dict[str, RegistryClient] = {}
        self.pushes = PushQueue(store, self.client, max_attempts=push_attempts, backoff=push_backoff)
        self.last_errors: list[str] = []
        self.counters = {"pull_hits": 0, "pull_misses": 0, "pull_errors": 0, "stage_pulls": 0,
                         "bytes_pulled": 0}

    def client(self, upstream: Upstream) -> RegistryClient:
        if upstream.url not in self._clients:
            self._clients[upstream.url] = RegistryClient(upstream, timeouts=self.timeouts)
        return self._clients[upstream.url]

    @property
    def pull_upstreams(self) -> list[Upstream]:
        return [u for u in self.upstreams if u.can_pull]

    @property
    def push_upstreams(self) -> list[Upstream]:
        return [u for u in self.upstreams if u.can_push]

    # ------------------------------------------------------------------ the ensure seam

    def as_sources(self) -> list[UpstreamSource]:
        """What to pass as the Ensurer's ``sources``: nothing when no upstream can be pulled from."""
        return [self] if self.pull_upstreams else []

    async def __call__(self, prepared: Wanted, log_fn: LogFn) -> PulledImage | None:
        """``Source`` for the Ensurer: the whole image, or else its lock (so the build installs
        exactly it) and the deepest shared stage; first the wheels the definition pins."""
        await self.pull_wheels([wheel.sha256 for wheel in pinned_wheels(prepared.definition)], log_fn=log_fn)
        errors = self.counters["pull_errors"]
        hit = await self.try_pull(prepared.key, prepared.variant, log_fn=log_fn)
        if hit is not None:
            return hit
        if self.counters["pull_errors"] == errors:   # a failing upstream is not asked (and waited for) twice
            await self.try_pull_lock(image_tag(prepared.key, prepared.variant), log_fn=log_fn)
        if self.stage_keys is not None:
            try:
                keys = await self.stage_keys(prepared, log_fn)
            except Exception as exc:  # noqa: BLE001 - a source never fails the ensure: build all stages
                log_fn(f"upstream: cannot compute stage keys ({exc}); building every stage")
                return None
            await self.try_pull_stage(keys, log_fn=log_fn)
        return None

    async def on_build_done(self, build: Finished) -> None:
        """The build hook: push images this daemon built (not pulled ones)."""
        if build.state == "succeeded" and build.outcome == "built" and build.image is not None:
            await self.push_after_build(build.image.repository, build.image.tag)

    async def try_pull(self, image_key: str, variant: str, *, log_fn: LogFn | None = None) -> PulledImage | None:
        """Look the image up on each pull upstream in order; copy it (and its lock) in on the first hit."""
        tag = image_tag(image_key, variant)
        hit = await self._pull_first(ENV_REPO, tag, "env", log_fn)
        self.counters["pull_hits" if hit is not None else "pull_misses"] += 1
        if hit is not None:
            await self.try_pull_lock(tag, log_fn=log_fn)
            hit.lock = await self._lock_of(tag, hit.repository, hit.manifest_digest)
            manifest = await self.store.get_manifest(hit.repository, hit.manifest_digest)
            hit.compression = layer_compression(parse_manifest(manifest.body)) if manifest is not None else ""
        return hit

    async def try_pull_lock(self, tag: str, *, log_fn: LogFn | None = None) -> bool:
        """Copy the lock of image ``tag`` (``<prefix>/lock:<tag>``) into the store unless it is
        there already; True when the store then has it."""
        if await self.store.get_manifest(LOCK_REPOSITORY, tag, with_body=False) is not None:
            return True
        return await self._pull_first(LOCK_REPOSITORY, tag, "lock", log_fn) is not None

    async def try_pull_stage(self, stage_keys: Sequence[str], *, log_fn: LogFn | None = None) -> PulledImage | None:
        """Pull the deepest stage image (``envcache/stage:<chain key>``) any upstream has."""
        for key in reversed(list(stage_keys)):
            if await self.store.get_manifest(STAGE_REPO, key, with_body=False) is not None:
                return None        # already local at this depth: the builder will find it
            hit = await self._pull_first(STAGE_REPO, key, "stage", log_fn)
            if hit is not None:
                self.counters["stage_pulls"] += 1
                return hit
        return None

    async def pull_wheels(self, wheels: Sequence[str], *, log_fn: LogFn | None = None) -> int:
        """Copy in the wheels (sha256 hex) the store lacks from the first upstream that has each;
        returns how many were pulled. A wheel no upstream has is left to pip and its URL."""
        pulled = 0
        for wheel in wheels:
            if not await self.store.has_blob(f"sha256:{wheel}") and \
                    await self._pull_first(WHEEL_REPO, wheel, "wheel", log_fn) is not None:
                pulled += 1
        return pulled

    async def _pull_first(self, local_repo: str, tag: str, kind: str, log_fn: LogFn | None) -> PulledImage | None:
        say = log_fn or (lambda _line: None)
        local = await self.store.get_manifest(local_repo, tag, with_body=False)
        if local is not None:      # pulled earlier (``envcache pull``) but not yet filed as an image
            say(f"upstream: {local_repo}:{tag} already in the local store")
            return PulledImage(local_repo, tag, local.digest, await image_size(self.store, local_repo, local.digest))
        for upstream in self.pull_upstreams:
            remote = upstream.repo(kind)
            began = time.monotonic()
            client = self.client(upstream)
            before = client.bytes_in
            try:
                async with Ticker(say, lambda ticker: f"upstream: pulling {remote}:{tag} from {upstream.url}: "
                                                      f"{size(client.bytes_in - before)} received"):
                    stats = await pull_image(client, remote, tag, self.store, local_repo, tag)
            except EnvcacheError as exc:
                self._error(f"pull {remote}:{tag} from {upstream.url}: {exc}", say)
                continue
            except Exception as exc:  # noqa: BLE001 - any upstream failure means "build instead"
                self._error(f"pull {remote}:{tag} from {upstream.url}: {type(exc).__name__}: {exc}", say)
                continue
            if stats is None:
                say(f"upstream: {upstream.url}/{remote}:{tag} not found")
                continue
            self.counters["bytes_pulled"] += stats.bytes_copied
            say(f"upstream: pulled {upstream.url}/{remote}:{tag} {stats.digest} "
                f"({stats.blobs_copied} blobs, {stats.bytes_copied} bytes copied, "
                f"{stats.blobs_skipped} already local) in {time.monotonic() - began:.2f}s")
            return PulledImage(local_repo, tag, stats.digest, stats.size, upstream=upstream.url, stats=stats.as_dict())
        return None

    async def _lock_of(self, tag: str, repository: str, digest: str) -> dict:
        """The lock of a pulled image, read by the build side's lock reader."""
        if self.lock_reader is None:
            return {}
        try:
            return await self.lock_reader(self.store, tag, repository, digest) or {}
        except Exception as exc:  # noqa: BLE001 - a missing lock must not turn a hit into a miss
            log.warning("cannot read the lock of %s@%s: %s", repository, digest, exc)
            return {}

    def _error(self, message: str, say: LogFn) -> None:
        self.counters["pull_errors"] += 1
        self.last_errors = (self.last_errors + [message])[-20:]
        say(f"upstream: {message}; falling back")
        log.warning("upstream %s", message)

    # ------------------------------------------------------------------ pushes

    async def push_after_build(self, repository: str, tag: str) -> list[str]:
        """Push an image, the wheels it pins and the stage images it was built on to every push
        upstream (background)."""
        ids: list[str] = []
        stages = await self.stages_of(repository, tag)
        wheels = await self.wheels_of(tag)
        for upstream in self.push_upstreams:
            items = [(WHEEL_REPO, wheel, ()) for wheel in wheels]
            items += [(STAGE_REPO, stage_tag, ()) for stage_tag in stages]
            # Layers shared with the stage images are mounted from <prefix>/stage, not re-sent.
            items.append((repository, tag, (upstream.repo("stage"),)))
            if await self.store.get_manifest(LOCK_REPOSITORY, tag, with_body=False) is not None:
                items.append((LOCK_REPOSITORY, tag, ()))   # after its subject, the image
            ids.extend(await self.pushes.schedule_many(upstream, items))
        return ids

    async def push_wheel(self, wheel: str) -> list[str]:
        """Push one wheel artifact (sha256 hex) to every push upstream (background): an uploaded
        wheel is shared at once, so other daemons can build with it."""
        return [await self.pushes.schedule(upstream, WHEEL_REPO, wheel) for upstream in self.push_upstreams]

    async def wheels_of(self, tag: str) -> list[str]:
        """The wheels (sha256 hex) the image filed under ``tag`` pins that this store holds."""
        image = await self.store.images.get(parse_image_tag(tag)[0])
        if image is None or image.canonical is None:
            return []
        hexes = sorted(digest.split(":", 1)[1] for digest in wheel_digests(json.loads(image.canonical)))
        return [h for h in hexes if await self.store.get_manifest(WHEEL_REPO, h, with_body=False) is not None]

    async def push_step(self, key: str) -> list[str]:
        """Push a pipeline step result (``envcache/step:<key>``) to every push upstream (background)."""
        return [await self.pushes.schedule(upstream, STEP_REPOSITORY, key) for upstream in self.push_upstreams]

    async def try_pull_step(self, key: str) -> bool:
        """Copy a pipeline step result in from the first pull upstream that has it: another
        machine ran the step, so this one reuses its outputs instead of running it."""
        for upstream in self.pull_upstreams:
            remote = upstream.repo("step")
            try:
                if await pull_image(self.client(upstream), remote, key, self.store, STEP_REPOSITORY, key) is not None:
                    return True
            except Exception as exc:  # noqa: BLE001 - any upstream failure means "run the step here"
                self._error(f"pull {remote}:{key} from {upstream.url}: {type(exc).__name__}: {exc}", lambda _: None)
        return False

    async def stages_of(self, repository: str, tag: str) -> list[str]:
        """Local stage tags whose layers are a prefix of the image's layers (what it was built on)."""
        layers = await _layers(self.store, repository, tag)
        if not layers:
            return []
        found = []
        for stage_tag in await self.store.manifests.tags(STAGE_REPO):
            stage_layers = await _layers(self.store, STAGE_REPO, stage_tag)
            if stage_layers and len(stage_layers) <= len(layers) and layers[:len(stage_layers)] == stage_layers:
                found.append(stage_tag)
        return found

    def bytes_sent(self) -> int:
        """Bytes pushed by every upstream client so far (``envcache push`` shows it as it goes)."""
        return sum(client.bytes_out for client in self._clients.values())

    async def status(self) -> dict[str, Any]:
        return {"upstreams": [u.describe() for u in self.upstreams], "counters": dict(self.counters),
                "last_errors": list(self.last_errors), "pushes": await push_status(self.store.pushes, limit=20)}

    async def aclose(self) -> None:
        await self.pushes.aclose()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


async def _layers(store: Store, repository: str, ref: str) -> list[str]:
    """Layer digests of the first platform manifest of ``repository:ref`` (empty if unknown)."""
    manifest = await store.get_manifest(repository, ref)
    try:
        parsed = parse_manifest(manifest.body) if manifest else None
        if parsed is not None and parsed.manifests:
            child = await store.get_manifest(repository, parsed.manifests[0].digest)
            parsed = parse_manifest(child.body) if child else None
    except InvalidInput:
        return []
    return parsed.layer_digests if parsed is not None else []
