"""The store's interfaces, and only those: what a metadata backend and a blob backend must do.

bazel-remote's ``cache/cache.go`` is the model: one file holds the contracts, implementations
live beside it (``store/sqlite/`` and ``store/files.py`` today; PostgreSQL and S3-compatible
object storage next). Upper layers never see an implementation: they receive a
:class:`~envcache.store.store.Store`, which groups one of each repository and a blob driver and
offers the operations that span them (``commit_upload``, ``put_manifest``, ...).

Contracts every implementation keeps:

- **Async.** Every method that touches storage is a coroutine. The SQLite implementation runs
  its statements directly inside them (they are fast and indexed); a network backend awaits.
- **Atomic.** A method that writes is all-or-nothing. Calls made inside
  ``async with metadata.transaction()`` by the task that opened it form one unit, and no other
  writer commits in between (fsck's repair relies on that, and so do blob publication and
  deletion: rule 3 below). Transactions are short: nothing waits on a client inside one.
- **Verified before visible.** A blob is readable under its digest only after its bytes were
  hashed and matched. Visibility is one atomic step (a rename on a file system; "write to a
  temp key, verify, make visible" on an object store); readers never see a partial blob.
- **The index follows the files.** Blob rows and links are written after the blob is visible
  and deleted before it is removed, so a crash leaves files without rows (harmless: fsck notes
  them, gc collects them) — never rows without files.
- **Visible and deletable are mutually exclusive** (what makes "nothing acknowledged is ever
  lost" true while gc runs; issue 13):

  1. *Every use is a write in the index, in the transaction that creates the reference.* A use
     is an upload finishing (first push or re-push: ``BlobIndex.record``), a link into a
     repository (a mount, an upload, a manifest: ``BlobIndex.link``), a manifest naming blobs
     (``BlobIndex.use``, which also says which are missing) or child manifests
     (``Manifests.use``), a manifest pushed again or tagged (``Manifests.put``/``set_tag``). A
     new tag or index is a use of everything it reaches, transitively (child manifests and
     their blobs): gc may have marked any of it dead already. A use bumps the row's
     *generation* and use time. Reads are not uses: they only note a time in
     memory, flushed in batches, best effort (``BlobIndex.touch``/``flush_reads``) — a read
     never needs a write.
  2. *gc marks without locks and deletes conditionally.* The mark reads blob rows (with their
     generations) *before* the manifests, tags and images that reference them, so a reference
     created after the blob was read shows up as a changed generation and one created before
     is seen by the mark. The sweep deletes a row only if its generation is still the marked
     one and its use time is still before the cutoff (``forget_unused``, ``delete_unused``,
     ``unlink_unused``): a use that commits first makes gc skip the row; a use that comes
     second finds no row and creates its own. PostgreSQL gives this with ``DELETE ... WHERE gen
     = $marked`` under READ COMMITTED (the row lock makes the later statement see the newest
     version); SQLite with its single writer.
  3. *Bytes are published and destroyed only under the index's write lock, re-checked there.*
     A writer stages verified, durable bytes privately (``BlobDriver.stage*``), then inside
     ``metadata.transaction()`` publishes them (``BlobDriver.publish``: keep what is already
     visible under the digest, else make its own bytes visible) and records the use. gc
     destroys a blob's bytes (``BlobDriver.delete``) only inside such a transaction, after
     ``BlobIndex.known`` confirmed that no row names the digest. So a writer that found the
     bytes present has committed its row before gc can look, and a writer that comes after the
     delete publishes its own bytes. An object store that names objects by unique keys (the row
     names its key) keeps the same rule with an outbox: the keys of deleted rows are queued in
     the deleting transaction and destroyed after it commits; a new upload never reuses a key.
  4. *Writes in progress are claimed.* A writer holds a claim on its staged bytes (an flock on a
     temp file, a session heartbeat on an object store) from creation until it is done; gc
     removes temp objects and spool leftovers only when unclaimed and older than its cutoff.
  5. *One gc at a time* per store (the SQLite store is owned by one process, which serialises
     its gc runs; PostgreSQL: a session advisory lock on a dedicated connection).
- **A full disk is an answer, not a crash.** A write with no room raises
  :class:`~envcache.store.errors.InsufficientStorage` (HTTP 507) and leaves nothing behind;
  new blob writes are refused while less than the store's free-space floor would remain, so
  deletes and gc (which only shrink the store, but need a little room for the index's log)
  always work; ``BlobDriver.release_reserve`` gives them room even when something else filled
  the disk.
- **Ordering.** Listings that page (tags, repositories) are in byte order of the name; a page
  starts strictly after ``last``. Referrers come in the order they were pushed.
- **Records, not rows.** Methods exchange the frozen records of :mod:`envcache.store.records`
  and plain values; no backend type (cursor, row, connection) crosses this boundary.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from envcache.store.records import (
    BlobRow, BuildRecord, EnvironmentVersion, FileEntry, KnownLayer, ManifestRow, ReplacedImage, StagedBlob,
    StepResult,
    StoredImage, UploadSession, WheelRecord,
)

#: (repository, manifest digest): what gc roots and marks.
ManifestRef = tuple[str, str]


class Metadata(Protocol):
    """The database behind the repositories: opened and migrated by its backend."""

    schema_version: int

    def transaction(self, *, write: bool = True) -> AbstractAsyncContextManager[None]:
        """One atomic unit for the calling task (see the module docstring). ``write=False``:
        a consistent snapshot that still keeps other writers out, then nothing is changed."""

    def close(self) -> None: ...


class BlobDriver(Protocol):
    """Blob bytes by digest (distribution's ``StorageDriver``, narrowed to content-addressed use).

    Digests are validated before they become keys. A write is two steps (distribution's
    ``BlobWriter.Commit``, split at the transaction): ``stage*`` verifies and persists the bytes
    privately, ``publish`` — called inside the metadata transaction that records the blob — makes
    them visible under the digest. Two writers of the same content both succeed.
    """

    name: str

    async def stat(self, digest: str) -> FileEntry | None:
        """The stored blob's size and age, or None when absent."""

    async def read(self, digest: str) -> bytes | None:
        """A small blob's bytes (manifests, configs), or None when absent."""

    def open(self, digest: str) -> BinaryIO:
        """A blocking reader for a worker thread (layer streams for export and load)."""

    def local_path(self, digest: str) -> Path | None:
        """A file holding the blob that can be sent with sendfile, or None (object stores)."""

    def url_for(self, digest: str) -> str | None:
        """A URL a client may be redirected to for the bytes, or None to stream them."""

    def scratch(self, prefix: str) -> AbstractContextManager[Path]:
        """A private local directory for one job's spool files (image exports, archives),
        claimed until the block ends (gc leaves it alone), then removed; emptied on start."""

    def free_bytes(self) -> int | None:
        """Free space where new blobs land (None: not limited, as on an object store)."""

    async def release_reserve(self) -> None:
        """Before deletes and gc on a nearly full disk: free the space kept back for them."""

    async def restore_reserve(self, floor: int) -> None:
        """After gc: keep that space back again once ``floor`` bytes stay free (best effort)."""

    async def stage(self, chunks: bytes | AsyncIterable[bytes], expected_digest: str | None = None,
                    expected_size: int | None = None) -> StagedBlob:
        """Hash and persist the bytes privately (claimed by this writer); raises DigestMismatch /
        SizeMismatch / InsufficientStorage and keeps nothing when they fail."""

    async def stage_file(self, path: Path, expected_digest: str | None = None, *,
                         verified: bool = False) -> StagedBlob:
        """Take a finished local file in (moved when possible). ``verified`` means the caller
        hashed exactly these bytes as it wrote them, so they are not read again."""

    async def publish(self, staged: StagedBlob) -> None:
        """Inside the metadata transaction that records the use: make ``staged`` visible under
        its digest, or keep the bytes already visible there (see the module docstring, 3)."""

    async def unpublish(self, staged: StagedBlob) -> None:
        """The transaction that published ``staged`` failed and no row names the digest: put
        the bytes back where they were staged (an upload session stays resumable)."""

    async def discard(self, staged: StagedBlob) -> None:
        """Release the writer's claim; staged bytes that were not published are removed."""

    async def delete(self, digests: Sequence[str]) -> list[str]:
        """Remove these blobs; returns those that were there (absent is not an error). Only gc
        calls this, inside a metadata transaction, after ``BlobIndex.known`` showed that no row
        names them."""

    def blobs(self) -> AsyncIterator[FileEntry]:
        """Every object in blob storage, strays (``digest`` None) included."""

    async def digest_of(self, entry: FileEntry) -> tuple[str, int]:
        """Re-hash a stored object with the algorithm its name says: ``(digest, size)``."""

    async def quarantine(self, entry: FileEntry, name: str) -> str:
        """Move an object out of blob storage (never delete: it may be the only copy of
        something a person wants to see); returns where it went."""

    async def temp_entries(self) -> list[FileEntry]:
        """Leftovers of writes in progress (or of a crash), with their age."""

    async def remove_temp(self, key: str, older_than: float) -> bool:
        """Remove a temp object unless a writer claims it or it changed since ``older_than``."""


class UploadSpool(Protocol):
    """The bytes of OCI upload sessions until they are committed as a blob."""

    async def create_upload(self, session_id: str) -> None: ...

    async def append(self, session_id: str, offset: int, chunks: AsyncIterable[bytes], hasher: Any = None) -> int:
        """Write at ``offset`` (updating ``hasher``); returns the bytes written. On failure the
        data is cut back to ``offset``: a half-received chunk is never kept. The writer claims
        the session's bytes while it writes."""

    async def upload_size(self, session_id: str) -> int | None: ...

    async def truncate_upload(self, session_id: str, offset: int) -> None: ...

    async def upload_digest(self, session_id: str, algorithm: str) -> str:
        """Hash what was received (when no running hash covers it)."""

    async def stage_upload(self, session_id: str, digest: str) -> StagedBlob:
        """The session's verified bytes, durable and ready for ``BlobDriver.publish``."""

    async def delete_upload(self, session_id: str) -> None: ...

    async def remove_upload_leftover(self, key: str, older_than: float) -> bool:
        """Remove spool bytes no session owns, unless claimed or changed since ``older_than``."""

    async def upload_entries(self) -> list[FileEntry]:
        """Every spool object, with its age (gc removes those no session owns)."""


class BlobIndex(Protocol):
    """Which blobs exist (size, media type, use time, generation) and which repository may serve
    each: a blob is visible in a repository only through a link, as in distribution, so deleting
    it from one repository cannot break another that shares it."""

    async def record(self, digest: str, size: int, media_type: str | None) -> None:
        """Index a visible blob: insert it, or count a use of the existing row (generation + 1)."""

    async def use(self, digests: Sequence[str]) -> list[str]:
        """Count a use of each blob (a manifest naming them); returns those with no row."""

    async def touch(self, digest: str) -> None:
        """Note a read, in memory only: a read never writes (and never fails on a full disk)."""

    async def flush_reads(self) -> None:
        """Write the read times noted since the last flush (they survive a failed flush)."""

    async def get(self, digest: str) -> BlobRow | None: ...

    async def all(self) -> list[BlobRow]: ...

    async def known(self, digests: Sequence[str]) -> set[str]:
        """Those of ``digests`` that have a row."""

    async def link(self, repository: str, digests: Sequence[str]) -> None:
        """Make blobs visible in ``repository`` (created if new); a link is a use of the blobs
        and refreshes the link's own time."""

    async def linked(self, repository: str, digest: str) -> bool: ...

    async def unlink(self, repository: str, digest: str) -> bool:
        """Remove one link; True if there was one."""

    async def links(self) -> list[tuple[str, str, float]]:
        """Every (repository, digest, linked) link."""

    async def forget(self, digests: Sequence[str]) -> None:
        """Drop blob rows and all their links (fsck: the files are gone)."""

    async def forget_unused(self, marked: Sequence[tuple[str, int]], cutoff: float) -> list[str]:
        """gc: drop each ``(digest, generation)`` row, with its links, only if its generation is
        still the marked one and it was not used or read since ``cutoff`` (reads this process
        noted but did not flush yet count too); returns those dropped."""

    async def unlink_unused(self, links: Sequence[tuple[str, str, float]], cutoff: float) -> int:
        """gc: remove each ``(repository, digest, linked)`` link not refreshed since it was marked,
        unless its blob was used or read since ``cutoff``: a client that just read a manifest
        from that repository fetches the blob through the link next."""

    async def set_size(self, digest: str, size: int) -> None:
        """fsck: the file is the truth."""

    async def restore(self, digest: str, size: int, media_type: str | None, created: float) -> None:
        """fsck: a verified file whose row was lost gets it back."""


class Manifests(Protocol):
    """Manifests, tags, referrers and the repository catalog of the registry."""

    async def put(self, repository: str, digest: str, *, media_type: str, size: int, subject: str | None,
                  artifact_type: str | None, annotations: str | None, tag: str | None) -> None:
        """Record a manifest whose body is already a visible blob, and move ``tag`` to it; a push
        of a stored manifest is a use (generation + 1)."""

    async def find(self, repository: str, reference: str) -> ManifestRow | None:
        """The manifest a tag or digest names in ``repository``."""

    async def use(self, repository: str, digests: Sequence[str]) -> None:
        """Count a use of the stored manifests among ``digests`` (an index naming its children)."""

    async def set_tag(self, repository: str, tag: str, digest: str) -> None:
        """Move ``tag`` to a stored manifest: a use of that manifest."""

    async def delete_tag(self, repository: str, tag: str) -> bool: ...

    async def delete(self, repository: str, digest: str) -> bool:
        """Remove the manifest, its tags and its own link."""

    async def tags(self, repository: str, n: int | None = None, last: str | None = None) -> list[str]: ...

    async def tagged(self, repository: str) -> list[tuple[str, str]]:
        """(tag, digest) of every tag in ``repository``."""

    async def repositories(self, n: int | None = None, last: str | None = None) -> list[str]: ...

    async def ensure_repository(self, name: str) -> None: ...

    async def repository_exists(self, name: str) -> bool: ...

    async def referrers(self, repository: str, subject: str, artifact_type: str | None = None) -> list[dict[str, Any]]:
        """Descriptors (OCI JSON) of the manifests whose subject is ``subject``."""

    async def all(self, repository: str | None = None) -> list[ManifestRow]:
        """Every manifest (of ``repository`` when given)."""

    async def roots_for_gc(self) -> list[tuple[str, str, str]]:
        """Every (repository, tag, digest): tags keep what they name."""

    async def delete_tags(self, tags: Sequence[tuple[str, str, str]]) -> None:
        """Remove each (repository, tag, digest) tag that still names that digest."""

    async def delete_many(self, refs: Sequence[ManifestRef]) -> None:
        """Remove manifests and the tags pointing at them (fsck: their bodies are gone)."""

    async def delete_unused(self, marked: Sequence[tuple[str, str, int]], cutoff: float) -> list[ManifestRef]:
        """gc: remove each (repository, digest, generation) manifest whose generation is still the
        marked one, unused since ``cutoff`` and untagged; returns those removed."""

    async def drop_empty_repositories(self, older_than: float) -> int:
        """Forget repositories nothing names any more (no manifest, tag, link or upload)."""


class Uploads(Protocol):
    """OCI upload sessions: their repository and acknowledged offset (the bytes are spooled)."""

    async def create(self, session: UploadSession) -> None: ...

    async def get(self, session_id: str) -> UploadSession | None: ...

    async def set_offset(self, session_id: str, offset: int) -> None:
        """Acknowledge bytes up to ``offset`` (and refresh the session's idle clock)."""

    async def delete(self, session_id: str) -> bool: ...

    async def all(self) -> list[UploadSession]: ...

    async def idle(self, since: float) -> list[str]:
        """Ids of sessions not updated since ``since``."""


class Images(Protocol):
    """The image index: which image an image key is filed under (one row per key)."""

    async def get(self, key: str) -> StoredImage | None: ...

    async def put(self, image: StoredImage) -> None:
        """File (or re-file) ``image`` under its key; re-filing keeps the key's pin."""

    async def set_pinned(self, key: str, pinned: bool) -> StoredImage | None:
        """Pin (or unpin) the image filed under ``key``; None when there is none. A pinned image
        never expires (``--keep-days``) and is never evicted (the size cap)."""

    async def evictable(self, before: float) -> list[StoredImage]:
        """Unpinned images not used since ``before``, least recently used first (ties by key):
        what gc's size cap may evict, in order."""

    async def recent(self, limit: int) -> list[StoredImage]:
        """Most recently used first."""

    async def tag_of(self, key: str) -> str | None: ...

    async def touch(self, used: dict[str, float]) -> None:
        """Write batched last-used times (key → time)."""

    async def roots_for_gc(self) -> list[tuple[str, str, str]]:
        """Every (key, repository, manifest digest): a filed image keeps its manifest."""

    async def unused_since(self, limit: float) -> list[tuple[str, str, str]]:
        """(key, repository, manifest digest) of unpinned images not used since ``limit``."""

    async def all_tags(self) -> list[tuple[str, str, str, str]]:
        """(key, repository, tag, manifest digest) of every image."""

    async def delete(self, keys: Sequence[str]) -> None: ...

    async def replace(self, image: StoredImage, previous: StoredImage, now: float) -> None:
        """Atomically: file ``image`` under its key and keep ``previous`` (the image the key named
        until now) in the key's history, replaced at ``now``."""

    async def history(self, key: str) -> list[ReplacedImage]:
        """The images ``key`` was filed under before, most recently replaced first."""

    async def kept_history(self, replaced_since: float) -> list[tuple[str, str]]:
        """(repository, manifest digest) of history entries replaced at or after
        ``replaced_since``: gc keeps them."""

    async def forget_history(self, replaced_before: float) -> int:
        """Drop history entries replaced before ``replaced_before`` (gc); returns how many."""

    async def delete_unused(self, keys: Sequence[str], limit: float) -> list[str]:
        """gc (``--keep-days``, the size cap): remove those of ``keys`` still unpinned and unused
        since ``limit``; returns them."""

    async def page(self, limit: int, after: tuple[float, str] | None = None) -> list[StoredImage]:
        """Most recently used first, ties by key descending; a page starts strictly after the
        ``(last_used, key)`` of the previous page's last image (keyset paging: as fast on the
        hundredth page as on the first)."""

    async def totals(self) -> tuple[int, int]:
        """(number of images, sum of their sizes)."""

    async def by_spec_hashes(self, spec_hashes: Sequence[str]) -> list[StoredImage]:
        """Every image built from one of these (variant-applied) spec hashes."""

    async def mentioning(self, text: str) -> list[StoredImage]:
        """Images whose canonical form contains ``text``: a cheap filter (wheel removal and gc
        look for the images that pin a wheel), which callers refine by parsing."""


class StepResults(Protocol):
    """Pipeline step results by step key (the artifact itself is a tagged manifest)."""

    async def get(self, key: str) -> StepResult | None: ...

    async def put(self, result: StepResult) -> None:
        """File (or re-file: a step run again with ``allow_reuse`` off) the result under its key."""

    async def touch(self, used: dict[str, float]) -> None:
        """Record reuse times (retention orders by them)."""

    async def unused_since(self, limit: float) -> list[tuple[str, str]]:
        """(key, manifest digest) of every result last used before ``limit``."""

    async def delete_unused(self, keys: Sequence[str], limit: float) -> list[str]:
        """Forget those of ``keys`` still unused since ``limit``; returns the keys forgotten."""


class Builds(Protocol):
    """Builds as persisted: state while they run, state and log once they end."""

    async def save(self, build: BuildRecord) -> None: ...

    async def get(self, build_id: str) -> BuildRecord | None: ...

    async def fail_interrupted(self, reason: str) -> int:
        """Builds a stopped daemon left queued or running end as failed; returns how many."""

    async def page(self, limit: int, *, state: str | None = None, key: str | None = None,
                   before: tuple[float, str] | None = None) -> list[BuildRecord]:
        """Newest first (ties by id descending), optionally only one state or one image key;
        a page starts strictly before the ``(created, id)`` of the previous page's last build.
        Listings leave ``log`` out (None): logs are read one build at a time."""

    async def counts(self) -> dict[str, int]:
        """Builds per state."""

    async def slowest(self, limit: int, since: float) -> list[BuildRecord]:
        """Succeeded builds created since ``since``, longest ``finished - started`` first (no log)."""


class Environments(Protocol):
    """Named environments: version N+1 of a name only for new content."""

    async def register(self, name: str, spec_hash: str, definition: dict[str, Any],
                       now: float) -> tuple[EnvironmentVersion, bool]:
        """Atomically: the latest version if its spec hash is ``spec_hash`` (False), else a new
        version numbered one above the latest (True), stored with its ``name`` and ``version``
        labels set to the registered ones."""

    async def get(self, name: str, version: int | None = None) -> EnvironmentVersion | None:
        """One version; the latest when ``version`` is None."""

    async def versions(self, name: str) -> list[EnvironmentVersion]: ...

    async def latest(self) -> list[EnvironmentVersion]:
        """The latest version of every name, by name."""

    async def page(self, limit: int, *, after: str | None = None, before: str | None = None,
                   contains: str = "") -> list[EnvironmentVersion]:
        """The latest version of each name, by name, only names containing ``contains`` (a
        literal, no wildcards; ASCII case ignored); strictly after ``after`` or, going back, the ``limit`` names
        just before ``before`` (still in name order). Keyset paging: no page costs more than
        the first."""

    async def count(self, contains: str = "") -> int:
        """How many names (containing ``contains``) have at least one version."""

    async def mentioning(self, text: str) -> list[EnvironmentVersion]:
        """Every version (of every name) whose stored definition contains ``text``: a cheap
        filter, refined by the caller (which wheels does a registered environment pin?)."""


class Wheels(Protocol):
    """Private wheels uploaded to the daemon, by digest. A file name names one wheel only, as on
    PyPI: an index listing two different files under one name could serve either."""

    async def add(self, wheel: WheelRecord) -> tuple[WheelRecord, bool]:
        """Atomically: the wheel already filed under ``wheel.digest`` (False), else ``wheel``
        filed (True). Raises :class:`~envcache.errors.Conflict` when another wheel has its file name."""

    async def get(self, digest: str) -> WheelRecord | None: ...

    async def named(self, filename: str) -> WheelRecord | None:
        """The wheel with this file name."""

    async def all(self) -> list[WheelRecord]:
        """Every wheel, by project name and then file name."""

    async def project(self, name: str) -> list[WheelRecord]:
        """The wheels of one project (PEP 503 name), by file name."""

    async def delete(self, digest: str) -> bool:
        """Forget the wheel (its artifact is the caller's business); True if it was there."""


class LayerMap(Protocol):
    """diff_id (uncompressed layer) → stored blob, per compression: lets ingest skip known layers."""

    async def find(self, diff_id: str, compression: str) -> KnownLayer | None: ...

    async def put(self, layer: KnownLayer) -> None: ...

    async def blob_digests(self) -> list[str]: ...

    async def forget_blobs(self, digests: Sequence[str]) -> None: ...


class BaseDigests(Protocol):
    """The last digest each base-image reference resolved to: the offline fallback."""

    async def get(self, reference: str) -> str | None: ...

    async def put(self, reference: str, digest: str, resolved: float) -> None: ...


class PushLog(Protocol):
    """Background pushes to upstream registries, one row per (image, upstream) push."""

    async def add(self, rows: Sequence[dict[str, Any]]) -> None: ...

    async def update(self, push_id: str, **values: Any) -> None: ...

    async def unfinished(self) -> list[dict[str, Any]]:
        """Pushes a stopped daemon left queued, running or retrying."""

    async def by_ids(self, ids: Sequence[str]) -> list[dict[str, Any]]: ...

    async def counts(self) -> dict[str, int]:
        """Pushes per state."""

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """The latest pushes, newest first."""

    async def for_tag(self, repository: str, tag: str) -> list[dict[str, Any]]:
        """Every push of ``repository:tag`` (to any upstream), newest first."""


class Activity(Protocol):
    """Counters per time bucket (hits, pulls, builds …): a small time series for the dashboard.

    A row is (resolution in seconds, counter name, bucket start in epoch seconds, count). Adding
    to a bucket that exists sums; the daemon prunes buckets past their retention, so the series
    stays bounded.
    """

    async def add(self, counts: Mapping[tuple[int, str, int], int]) -> None:
        """Add ``counts`` ((resolution, name, bucket start) → n) to their buckets, atomically."""

    async def series(self, resolution: int, since: int, step: int) -> list[tuple[str, int, int]]:
        """(name, start, count) of ``resolution`` buckets from ``since`` on, summed per ``step``
        seconds (a multiple of ``resolution``; starts are multiples of ``step``)."""

    async def prune(self, resolution: int, before: int) -> int:
        """Drop buckets of ``resolution`` that start before ``before``; returns how many."""
