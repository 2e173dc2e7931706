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
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from envcache.builder.plan import BuildPlan
from envcache.errors import EnvcacheError, NotFound
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


#: Builds ``prepared.definition`` (variant applied) under ``prepared.key``; raises on failure.
Builder = Callable[["Prepared", LogFn], Awaitable[BuiltLike]]
#: A source (e.g. an upstream registry) returns the image if it could provide it, else None.
Source = Callable[["Prepared", LogFn], Awaitable[BuiltLike | None]]


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
            recipe_version=self.recipe_version)

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
    outcome: str | None = None  # built | pulled | unchanged (refresh kept the old image)
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
            image=self.image.model(host) if self.image else None, request_id=self.request_id)


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
        offload: Offload | None = None,
    ) -> None:
        """``track_tags`` keeps the image index in step with the registry's tags: a hit needs its
        tag to still name a manifest, and an unchanged refresh moves the tag back to the image
        already filed. The daemon sets it (its builder and sources tag what they store)."""
        self._store = store
        self.resolver = resolver
        self._builder = builder
        self.recipe_version = str(recipe_version)
        self._variant_bases = variant_bases
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self.sources: list[Source] = list(sources)
        self._inflight: dict[tuple[str, bool], Build] = {}
        self._builds: dict[str, Build] = {}
        self._tasks: set[asyncio.Task] = set()
        self._touched: dict[str, float] = {}
        self._on_build_done = on_build_done
        self._track_tags = track_tags
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
        digest = "none" if reference is None else await self.resolver.resolve(reference)
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
        """The cached image for ``prepared`` or None; verifies canonical bytes on a hit."""
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
        image = await self.lookup(prepared)
        # Refreshing only makes sense for unpinned requirements; the builder records them in
        # the lock, and an image whose every requirement is pinned would rebuild identically.
        if image is not None and (not refresh or image.lock.get("unpinned") == []):
            return Outcome(prepared, image=image)
        slot = (prepared.key, refresh)
        build = self._inflight.get(slot)
        if build is None:
            name, version = environment if environment else (None, None)
            build = Build(uuid.uuid4().hex, prepared.key, variant, prepared.spec_hash, name, version, refresh,
                          request_id)
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

    async def _run(self, build: Build, prepared: Prepared, slot: tuple[str, bool]) -> None:
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
            build.image, build.outcome = await self._record(prepared, built, outcome, build.refresh)
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
        if not build.refresh:
            for source in self.sources:
                got = await source(prepared, log)
                if got is not None:
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

    async def _record(self, prepared: Prepared, built: BuiltLike, outcome: str,
                      refresh: bool) -> tuple[ImageRecord, str]:
        """File the image under its key → (record, outcome).

        A refresh that resolved exactly the same versions keeps the image already filed (its
        entry stays as it is; the tag the builder moved goes back to it), so clients holding the
        old digest are not told about a "new" image that differs only in timestamps.
        """
        previous = await self._store.images.get(prepared.key) if refresh else None
        if previous is not None and previous.lock == (built.lock or {}):
            if self._track_tags and previous.manifest_digest != built.manifest_digest:
                await self._store.set_tag(previous.repository, previous.tag, previous.manifest_digest)
            return ImageRecord.from_stored(previous), "unchanged"
        now = time.time()
        stored = StoredImage(prepared.key, prepared.variant, prepared.spec_hash, prepared.canonical, built.repository,
                             built.tag, built.manifest_digest, built.size, now, now, dict(built.lock or {}),
                             prepared.base_digest, self.recipe_version)
        await self._store.images.put(stored)
        return ImageRecord.from_stored(stored), outcome
