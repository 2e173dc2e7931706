"""ensure(definition, variant): lookup → sources → build, with single-flight and a build queue.

The hit path is the product (build tools call it before every job), so it does no I/O beyond two
indexed SQLite reads (the image row, and that its tag still names a manifest): the base digest
comes from the resolver's memory cache, and ``last_used`` is batched in memory and flushed
periodically instead of written per hit.

On a miss the work runs in a :class:`Build` task owned by the daemon, never by the request that
asked for it: every concurrent request for the same key attaches to the same task
(single-flight), reads the same log, and gets the same answer, and a client that hangs up
merely stops listening — the build goes on for the others and for the cache.

``sources`` are tried before building, inside the same single-flight task: that is how pulling
from upstream registries plugs in (:class:`envcache.upstream.source.UpstreamSource`). The
machinery itself only knows callables (builder, sources, hooks), so the tests drive it with
small real ones and the composition root (:mod:`envcache.service.app`) connects it to the
engine, the upstream tier and the store.

This module is the only writer of the image index: the builder and the sources put manifests in
the store and hand back what they made; filing it under its key happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from envcache.builder.lock import Lock
from envcache.builder.lock import changes as lock_changes
from envcache.builder.plan import BuildPlan
from envcache.errors import EnvcacheError, NotFound
from envcache.oci import layer_compression, parse_manifest
from envcache.progress import Ticker
from envcache.service import schemas
from envcache.service.bases import BaseDigestResolver
from envcache.service.offload import Offload, is_large
from envcache.store import BuildRecord, InsufficientStorage, Store, StoredImage

if TYPE_CHECKING:
    from envcache.definition.model import Definition

log = logging.getLogger(__name__)

LogFn = Callable[[str], None]
FINISHED_RETENTION = 300.0  # seconds a finished build stays in memory


class BuiltLike(Protocol):
    """What a builder or a source hands back (``envcache.builder.BuiltImage`` has this shape)."""

    repository: str
    tag: str
    manifest_digest: str
    size: int
    lock: dict
    compression: str


#: Builds ``prepared.definition`` (variant applied) under ``prepared.key``; raises on failure.
Builder = Callable[["Prepared", LogFn], Awaitable[BuiltLike]]
#: A source (e.g. an upstream registry) returns the image if it could provide it, else None.
Source = Callable[["Prepared", LogFn], Awaitable[BuiltLike | None]]
#: Re-stores a stored image (filed, or just pulled) with its layers in the configured compression
#: (same config, same lock).
Recompressor = Callable[[BuiltLike, LogFn], Awaitable[BuiltLike]]


class KeyCollision(EnvcacheError):
    """Two different canonical forms hashed alike: refuse rather than hand out a wrong image."""

    http_status = 409


class BuildError(EnvcacheError):
    """The build a client waited for failed; the message carries the reason and log tail."""

    http_status = 422


@dataclass(frozen=True)
class ImageRecord(StoredImage):
    """A cached image as the API shows it (the image index's entry, plus its documents)."""

    @classmethod
    def from_stored(cls, image: StoredImage, **changes: Any) -> ImageRecord:
        return cls(**{**{f.name: getattr(image, f.name) for f in fields(image)}, **changes})

    def model(self, host: str) -> schemas.Image:
        """The API's image document; ``host`` is how the caller reached us, so the ref pulls."""
        return schemas.Image(
            key=self.key, variant=self.variant, spec_hash=self.spec_hash, image=f"{host}/{self.repository}:{self.tag}",
            repository=self.repository, tag=self.tag, digest=self.manifest_digest, size=self.size,
            created=self.created, last_used=self.last_used, lock=self.lock, base_digest=self.base_digest,
            recipe_version=self.recipe_version, compression=self.compression)

    def to_json(self, host: str) -> dict[str, Any]:
        return msgspec.to_builtins(self.model(host))


#: A request reduced to what the cache needs: variant-applied definition, canonical bytes, base,
#: key — the very plan the builder and the upstream tier are then handed.
Prepared = BuildPlan


@dataclass
class Build:
    """One unit of work for one key, shared by every client that asked for that key."""

    id: str
    key: str
    variant: str
    spec_hash: str
    env_name: str | None
    env_version: int | None
    refresh: bool
    request_id: str | None = None  # the request that started it (X-Request-Id; the access log has it too)
    state: str = "queued"  # queued → running → succeeded | failed
    # built | pulled | unchanged (refresh kept the old image) | recompressed (the same image,
    # its layers re-stored in the configured compression)
    outcome: str | None = None
    changes: list[str] | None = None  # what a refresh changed ("requests 2.32.2 → 2.32.3"); [] nothing
    recompress: ImageRecord | None = None   # the filed image to re-store in another compression
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    lines: list[str] = field(default_factory=list)
    image: ImageRecord | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def log(self, line: str) -> None:
        """Append to the shared log and wake every follower (fan-out by shared list + event)."""
        for part in line.rstrip("\n").split("\n"):
            self.lines.append(part)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def finish(self, state: str, error: str | None = None) -> None:
        self.state, self.error = state, error
        self.finished = self.finished or time.time()
        self._done.set()
        self._wake()

    async def follow(self) -> AsyncIterator[str]:
        """Every log line from the start, then new ones as they come, until the build ends."""
        index = 0
        while True:
            while index < len(self.lines):
                yield self.lines[index]
                index += 1
            if self.done:
                return
            await self._changed.wait()

    async def wait(self) -> ImageRecord:
        """The build's image; raises :class:`BuildError` when it failed."""
        await self._done.wait()
        if self.state != "succeeded" or self.image is None:
            raise BuildError(self.failure())
        return self.image

    def failure(self) -> str:
        """What a client is told when the build failed: its id, the verdict, the error lines."""
        return f"build {self.id}: {self.error}"

    def record(self) -> BuildRecord:
        """What the store keeps of the build (the log once it has ended)."""
        return BuildRecord(self.id, self.key, self.variant, self.spec_hash, self.env_name, self.env_version, self.state,
                           self.created, self.started, self.finished, self.error,
                           "\n".join(self.lines) if self.finished is not None else None)

    def model(self, host: str) -> schemas.Build:
        return schemas.Build(
            id=self.id, key=self.key, variant=self.variant, spec_hash=self.spec_hash,
            environment=schemas.BuildEnvironment(self.env_name, self.env_version) if self.env_name else None,
            state=self.state, outcome=self.outcome, refresh=self.refresh, created=self.created,  # type: ignore[arg-type]
            started=self.started, finished=self.finished, error=self.error,
            image=self.image.model(host) if self.image else None, changes=self.changes,
            request_id=self.request_id)


def _still_working(ticker: Ticker) -> str:
    return f"envcache: still working, {ticker.quiet:.0f}s since the last line ({ticker.elapsed:.0f}s in all)"


@dataclass
class Outcome:
    """What ensure answers: a hit (``image``) or a build to follow (``build``)."""

    prepared: Prepared
    image: ImageRecord | None = None
    build: Build | None = None

    @property
    def status(self) -> str:
        return "hit" if self.image is not None else "building"


class Ensurer:
    """The daemon's ensure machinery; one per app."""

    def __init__(
        self,
        *,
        store: Store,
        resolver: BaseDigestResolver,
        builder: Builder,
        recipe_version: str | int,
        variant_bases: dict[str, str | None],
        concurrency: int = 2,
        sources: Sequence[Source] = (),
        on_build_done: Callable[[Build, float], Awaitable[None]] | None = None,
        track_tags: bool = False,
        compression: str | None = None,
        recompress: Recompressor | None = None,
        offload: Offload | None = None,
    ) -> None:
        """``track_tags`` keeps the image index in step with the registry's tags: a hit needs its
        tag to still name a manifest, and an unchanged refresh moves the tag back to the image
        already filed. The daemon sets it (its builder and sources tag what they store).
        ``compression`` is the one the daemon serves: an image filed in another is never a hit,
        ``recompress`` re-stores it (a build that takes seconds, not a rebuild)."""
        self._store = store
        self.resolver = resolver
        self._builder = builder
        self.recipe_version = str(recipe_version)
        self._variant_bases = variant_bases
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self.sources: list[Source] = list(sources)
        self._inflight: dict[tuple[str, str], Build] = {}   # (key, build | refresh | recompress)
        self._builds: dict[str, Build] = {}
        self._tasks: set[asyncio.Task] = set()
        self._touched: dict[str, float] = {}
        self._on_build_done = on_build_done
        self._track_tags = track_tags
        self._compression = compression
        self._recompress = recompress
        self._offload = offload
        # Plans of large definitions, by the identity of the (never mutated, memoised) Definition:
        # canonicalising one takes a worker round trip, so each is done once per variant.
        self._plans: OrderedDict[tuple[int, str], tuple[Definition, BuildPlan]] = OrderedDict()

    async def start(self) -> None:
        """Builds left queued/running by a daemon that died are failed, not left hanging forever
        (on a full disk at start-up: at the next start, so the daemon still comes up)."""
        with contextlib.suppress(InsufficientStorage):
            await self._store.builds.fail_interrupted("interrupted: the daemon stopped during the build")

    # ---- lookup -------------------------------------------------------------------------

    async def prepare(self, definition: Definition, variant: str) -> Prepared:
        """Apply the variant, canonicalise, resolve the base, compute the key."""
        plan = await self._plan(definition, variant)
        reference = plan.base_reference
        digest = "none" if reference is None else \
            await self.resolver.resolve(reference, name=plan.base_name, login=plan.login)
        return plan.resolved(digest, self.recipe_version)

    async def _plan(self, definition: Definition, variant: str) -> BuildPlan:
        """The variant applied and canonicalised: inline, or for a large definition in the worker."""
        default_base = self._variant_bases.get(variant)
        if self._offload is None or not is_large(definition):
            return BuildPlan.of(definition, variant, default_base=default_base)
        key = (id(definition), variant)
        cached = self._plans.get(key)
        if cached is not None and cached[0] is definition:
            self._plans.move_to_end(key)
            return cached[1]
        plan = await self._offload.run(functools.partial(BuildPlan.of, default_base=default_base), definition, variant)
        self._plans[key] = (definition, plan)
        if len(self._plans) > 16:
            self._plans.popitem(last=False)
        return plan

    async def lookup(self, prepared: Prepared) -> ImageRecord | None:
        """The cached image for ``prepared`` if every client can pull it, else None."""
        image = await self.find(prepared)
        return image if image is not None and await self.pullable(image) else None

    async def pullable(self, image: ImageRecord) -> bool:
        """Whether ``image`` is stored in the compression the daemon serves (or uncompressed,
        which every client reads). An image filed before compressions were recorded is looked
        at once, and its compression recorded."""
        if self._compression is None or image.compression:
            return not self._foreign(image.compression)
        manifest = await self._store.get_manifest(image.repository, image.manifest_digest)
        found = (layer_compression(parse_manifest(manifest.body)) if manifest is not None else "") or self._compression
        await self._store.images.put(replace(image, compression=found))
        return not self._foreign(found)

    def _foreign(self, compression: str) -> bool:
        """Whether layers in ``compression`` are in another one than the daemon serves (and so
        may be unreadable by its clients): uncompressed layers never are."""
        return self._compression is not None and compression not in (self._compression, "none", "")

    async def find(self, prepared: Prepared) -> ImageRecord | None:
        """The image filed for ``prepared`` or None; verifies canonical bytes on a hit."""
        stored = await self._store.images.get(prepared.key)
        if stored is None:
            return None
        if stored.canonical is not None and stored.canonical != prepared.canonical:
            raise KeyCollision(
                f"image key {prepared.key} is filed under a different canonical form; refusing to answer "
                "with an image that may not match (please report this: it is a hash collision)"
            )
        if self._track_tags and \
                await self._store.get_manifest(stored.repository, stored.tag, with_body=False) is None:
            return None  # indexed but gone from the registry (deleted, collected): rebuild, never a dead ref
        now = time.time()
        self._touched[stored.key] = now
        return ImageRecord.from_stored(stored, last_used=now)

    async def flush_last_used(self) -> None:
        """Write the batched ``last_used`` times (GC orders by them; minute precision is plenty).
        Best effort: on a full disk they stay batched for the next flush."""
        touched, self._touched = self._touched, {}
        if touched:
            try:
                await self._store.images.touch(touched)
            except InsufficientStorage:
                self._touched = {**touched, **self._touched}

    # ---- ensure -------------------------------------------------------------------------

    async def ensure(
        self, definition: Definition, variant: str, *, refresh: bool = False,
        environment: tuple[str, int] | None = None, request_id: str | None = None,
    ) -> Outcome:
        """Answer a hit at once; otherwise start (or join) the build for this key."""
        prepared = await self.prepare(definition, variant)
        image = await self.find(prepared)
        recompress = image if image is not None and self._recompress and not await self.pullable(image) else None
        # Refreshing only makes sense for unpinned packages (transitive ones included); the
        # builder records them in the lock, and an image whose every package is pinned would
        # resolve identically.
        if image is not None and recompress is None and (not refresh or image.lock.get("unpinned") == []):
            return Outcome(prepared, image=image)
        prepared = replace(prepared, refresh=refresh and recompress is None)
        slot = (prepared.key, "recompress" if recompress else "refresh" if prepared.refresh else "build")
        build = self._inflight.get(slot)
        if build is None:
            name, version = environment if environment else (None, None)
            build = Build(uuid.uuid4().hex, prepared.key, variant, prepared.spec_hash, name, version, prepared.refresh,
                          request_id, recompress=recompress)
            self._inflight[slot] = build
            self._builds[build.id] = build
            await self._store.builds.save(build.record())
            task = asyncio.get_running_loop().create_task(self._run(build, prepared, slot))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return Outcome(prepared, build=build)

    def queue_depth(self) -> int:
        return sum(1 for b in self._inflight.values() if b.state == "queued")

    def running(self) -> int:
        return sum(1 for b in self._inflight.values() if b.state == "running")

    async def get_build(self, build_id: str) -> Build:
        """A build by id: live from memory, or the finished record from the store."""
        build = self._builds.get(build_id)
        if build is not None:
            return build
        row = await self._store.builds.get(build_id)
        if row is None:
            raise NotFound(f"no build with id {build_id!r}")
        build = Build(row.id, row.key, row.variant, row.spec_hash, row.env_name, row.env_version, False,
                      state=row.state, created=row.created, started=row.started, finished=row.finished,
                      error=row.error, lines=(row.log or "").splitlines())
        stored = await self._store.images.get(build.key)
        if stored is not None and build.state == "succeeded":
            build.image = ImageRecord.from_stored(stored)
        build._done.set()
        return build

    async def close(self) -> None:
        """Stop running builds (daemon shutdown) and flush pending writes."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except BaseException:  # noqa: BLE001 - shutting down; each build recorded its own fate
                pass
        await self.flush_last_used()

    async def _run(self, build: Build, prepared: Prepared, slot: tuple[str, str]) -> None:
        began = time.monotonic()
        try:
            started_by = f" by request {build.request_id}" if build.request_id else ""
            build.log(f"envcache: {('refresh of ' if build.refresh else '')}image {build.key} ({build.variant}) "
                      f"queued{started_by}")
            async with self._slots:
                build.state, build.started = "running", time.time()
                await self._store.builds.save(build.record())
                # Steps that print nothing for minutes (pip compiling, a slow pull, export) still
                # show that the build is alive.
                async with Ticker(build.log, _still_working) as build_log:
                    built, outcome = await self._obtain(build, prepared, build_log)
            build.image, build.outcome, build.changes = await self._record(prepared, built, outcome)
            if build.refresh:
                build.log("envcache: refresh: " + (f"{len(build.changes)} change(s): {', '.join(build.changes)}"
                                                   if build.changes else "nothing changed: every package resolved "
                                                                         "to the version it is locked at"))
            build.log(f"envcache: {build.outcome}: {build.image.repository}:{build.image.tag} {build.image.manifest_digest}")
            await self._finish(build, "succeeded")
        except asyncio.CancelledError:
            await asyncio.shield(self._finish(build, "failed", "cancelled: the daemon is shutting down"))
            raise
        except Exception as exc:  # a failed build is an outcome to report, not a crash
            message = str(exc) if isinstance(exc, EnvcacheError) else f"{type(exc).__name__}: {exc}"
            # A BuildFailed says "build failed in step …" and ends with the step's error lines,
            # which the log already has: the log gets the verdict, the error (what clients show)
            # both.
            verdict = getattr(exc, "verdict", None)
            if verdict is None:
                verdict = message = f"build failed: {message}"
            build.log(f"envcache: {verdict}")
            await self._finish(build, "failed", message)
            log.info("build %s failed: %s", build.id, message)
        finally:
            self._inflight.pop(slot, None)
            # Finished builds live on in the store; memory only keeps them while followers may
            # still be attaching, so a long-running daemon does not accumulate every log.
            asyncio.get_running_loop().call_later(FINISHED_RETENTION, self._builds.pop, build.id, None)
            if self._on_build_done is not None:
                await self._on_build_done(build, time.monotonic() - began)

    async def _finish(self, build: Build, state: str, error: str | None = None) -> None:
        """End the build: persisted (state and log) before any follower wakes up to read it."""
        build.state, build.error, build.finished = state, error, time.time()
        try:
            await self._store.builds.save(build.record())
        finally:
            build.finish(state, error)

    async def _obtain(self, build: Build, prepared: Prepared, log: LogFn) -> tuple[BuiltLike, str]:
        if build.recompress is not None and self._recompress is not None:
            log(f"envcache: {build.recompress.repository}:{build.recompress.tag} is stored "
                f"{build.recompress.compression or 'in an unrecorded compression'}; this daemon serves "
                f"{self._compression}: storing its layers so (same image, same lock)")
            return await self._recompress(build.recompress, log), "recompressed"
        if not build.refresh:
            for source in self.sources:
                got = await source(prepared, log)
                if got is not None:
                    if self._recompress is not None and self._foreign(got.compression):
                        # The upstream's copy is in another compression: never answer with it.
                        log(f"envcache: the pulled image is stored {got.compression}; this daemon serves "
                            f"{self._compression}: storing its layers so (same image, same lock)")
                        got = await self._recompress(got, log)
                    return got, "pulled"
        built = await self._builder(prepared, log)
        return built, "built"

    async def images(self, limit: int) -> list[ImageRecord]:
        """Cached images, most recently used first (as of the last flush of ``last_used``)."""
        return [ImageRecord.from_stored(image) for image in await self._store.images.recent(limit)]

    async def image(self, key: str) -> ImageRecord:
        """One cached image by key, as filed (no registry check: that is :meth:`lookup`'s job)."""
        stored = await self._store.images.get(key)
        if stored is None:
            raise NotFound(f"no image with key {key[:80]!r}")
        return ImageRecord.from_stored(stored)

    async def _record(self, prepared: Prepared, built: BuiltLike,
                      outcome: str) -> tuple[ImageRecord, str, list[str] | None]:
        """File the image under its key → (record, outcome, what a refresh changed).

        A refresh that resolved exactly the same packages keeps the image already filed (its
        entry stays as it is; should the builder have moved the tag, it goes back), so clients
        holding its digest are never told about a "new" image. An image the key named before (a
        refresh that changed something, a rebuild with other bytes) stays in the key's history.
        """
        previous = await self._store.images.get(prepared.key)
        changes = None
        if prepared.refresh and previous is not None:
            changes = lock_changes(Lock.from_json(previous.lock), Lock.from_json(built.lock))
            if not changes:
                if self._track_tags and previous.manifest_digest != built.manifest_digest:
                    await self._store.set_tag(previous.repository, previous.tag, previous.manifest_digest)
                return ImageRecord.from_stored(previous), "unchanged", changes
        now = time.time()
        stored = StoredImage(prepared.key, prepared.variant, prepared.spec_hash, prepared.canonical, built.repository,
                             built.tag, built.manifest_digest, built.size, now, now, dict(built.lock or {}),
                             prepared.base_digest, self.recipe_version,
                             # an image without layers is in whatever compression the daemon serves
                             built.compression or self._compression or "")
        if previous is not None and previous.manifest_digest != built.manifest_digest:
            await self._store.images.replace(stored, previous, now)
        else:
            await self._store.images.put(stored)
        return ImageRecord.from_stored(stored), outcome, changes
