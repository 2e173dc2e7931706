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
  writer commits in between (gc and fsck rely on that between their mark and their sweep).
- **Verified before visible.** A blob is readable under its digest only after its bytes were
  hashed and matched. Visibility is one atomic step (a rename on a file system; "write to a
  temp key, verify, make visible" on an object store); readers never see a partial blob.
- **The index follows the files.** Blob rows and links are written after the blob is visible
  and deleted before it is removed, so a crash leaves files without rows (which fsck restores
  and gc collects) — never rows without files.
- **Ordering.** Listings that page (tags, repositories) are in byte order of the name; a page
  starts strictly after ``last``. Referrers come in the order they were pushed.
- **Records, not rows.** Methods exchange the frozen records of :mod:`envcache.store.records`
  and plain values; no backend type (cursor, row, connection) crosses this boundary.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from envcache.store.records import (
    BlobRow, BuildRecord, EnvironmentVersion, FileEntry, KnownLayer, ManifestRow, StoredImage, UploadSession,
    WheelRecord,
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

    Digests are validated before they become keys. ``write``/``adopt`` return only once the
    blob is verified and visible; two writers of the same content both succeed.
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

    def scratch_dir(self) -> Path:
        """Local scratch space for spool files (image exports, archives); emptied on start."""

    async def write(self, chunks: bytes | AsyncIterable[bytes], expected_digest: str | None = None,
                    expected_size: int | None = None) -> tuple[str, int]:
        """Store the bytes; raises DigestMismatch/SizeMismatch (and keeps nothing) when they are
        not what was expected. Returns ``(digest, size)``."""

    async def adopt(self, path: Path, expected_digest: str | None = None, *,
                    verified: bool = False) -> tuple[str, int]:
        """Take a finished local file in as a blob (moved when possible). ``verified`` means the
        caller hashed exactly these bytes as it wrote them, so they are not read again."""

    async def delete(self, digest: str) -> None:
        """Remove the blob; absent is not an error. Only gc calls this, after the index forgot it."""

    def blobs(self) -> AsyncIterator[FileEntry]:
        """Every object in blob storage, strays (``digest`` None) included."""

    async def digest_of(self, entry: FileEntry) -> tuple[str, int]:
        """Re-hash a stored object with the algorithm its name says: ``(digest, size)``."""

    async def quarantine(self, entry: FileEntry, name: str) -> str:
        """Move an object out of blob storage (never delete: it may be the only copy of
        something a person wants to see); returns where it went."""

    async def temp_entries(self) -> list[FileEntry]:
        """Leftovers of writes in progress (or of a crash), with their age."""

    async def remove_temp(self, key: str) -> None: ...


class UploadSpool(Protocol):
    """The bytes of OCI upload sessions until they are committed as a blob."""

    async def create_upload(self, session_id: str) -> None: ...

    async def append(self, session_id: str, offset: int, chunks: AsyncIterable[bytes], hasher: Any = None) -> int:
        """Write at ``offset`` (updating ``hasher``); returns the bytes written. On failure the
        data is cut back to ``offset``: a half-received chunk is never kept."""

    async def upload_size(self, session_id: str) -> int | None: ...

    async def truncate_upload(self, session_id: str, offset: int) -> None: ...

    async def upload_digest(self, session_id: str, algorithm: str) -> str:
        """Hash what was received (when no running hash covers it)."""

    async def commit_upload(self, session_id: str, digest: str) -> None:
        """Make the verified bytes visible as blob ``digest`` (they leave the spool)."""

    async def delete_upload(self, session_id: str) -> None: ...

    async def upload_entries(self) -> list[FileEntry]:
        """Every spool object, with its age (gc removes those no session owns)."""


class BlobIndex(Protocol):
    """Which blobs exist (size, media type, last access) and which repository may serve each:
    a blob is visible in a repository only through a link, as in distribution, so deleting it
    from one repository cannot break another that shares it."""

    async def record(self, digest: str, size: int, media_type: str | None) -> None:
        """Index a visible blob (idempotent; refreshes its last access)."""

    async def touch(self, digest: str) -> None:
        """Note a read; implementations may coalesce (gc only needs minute precision)."""

    async def get(self, digest: str) -> BlobRow | None: ...

    async def all(self) -> list[BlobRow]: ...

    async def link(self, repository: str, digests: Sequence[str]) -> None:
        """Make blobs visible in ``repository`` (created if new)."""

    async def linked(self, repository: str, digest: str) -> bool: ...

    async def unlink(self, repository: str, digest: str) -> bool:
        """Remove one link; True if there was one."""

    async def links(self) -> list[tuple[str, str, float]]:
        """Every (repository, digest, created) link."""

    async def forget(self, digests: Sequence[str]) -> None:
        """Drop blob rows and all their links (gc, fsck: the files are going or gone)."""

    async def unlink_many(self, pairs: Sequence[tuple[str, str]]) -> None: ...

    async def set_size(self, digest: str, size: int) -> None:
        """fsck: the file is the truth."""

    async def restore(self, digest: str, size: int, media_type: str | None, created: float) -> None:
        """fsck: a verified file whose row was lost gets it back."""


class Manifests(Protocol):
    """Manifests, tags, referrers and the repository catalog of the registry."""

    async def put(self, repository: str, digest: str, *, media_type: str, size: int, subject: str | None,
                  artifact_type: str | None, annotations: str | None, tag: str | None) -> None:
        """Record a manifest whose body is already a visible blob, and move ``tag`` to it."""

    async def find(self, repository: str, reference: str) -> ManifestRow | None:
        """The manifest a tag or digest names in ``repository``."""

    async def set_tag(self, repository: str, tag: str, digest: str) -> None: ...

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

    async def all(self) -> list[ManifestRow]: ...

    async def roots_for_gc(self) -> list[tuple[str, str, str]]:
        """Every (repository, tag, digest): tags keep what they name."""

    async def delete_tags(self, pairs: Sequence[tuple[str, str]]) -> None: ...

    async def delete_many(self, refs: Sequence[ManifestRef]) -> None:
        """Remove manifests and the tags pointing at them (gc, fsck)."""

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
        """File (or re-file) ``image`` under its key."""

    async def recent(self, limit: int) -> list[StoredImage]:
        """Most recently used first."""

    async def tag_of(self, key: str) -> str | None: ...

    async def touch(self, used: dict[str, float]) -> None:
        """Write batched last-used times (key → time)."""

    async def roots_for_gc(self) -> list[tuple[str, str, str]]:
        """Every (key, repository, manifest digest): a filed image keeps its manifest."""

    async def unused_since(self, limit: float) -> list[tuple[str, str, str]]:
        """(key, repository, manifest digest) of images not used since ``limit``."""

    async def all_tags(self) -> list[tuple[str, str, str, str]]:
        """(key, repository, tag, manifest digest) of every image."""

    async def delete(self, keys: Sequence[str]) -> None: ...

    async def mentioning(self, text: str) -> list[StoredImage]:
        """Images whose canonical form contains ``text``: a cheap filter (wheel removal and gc
        look for the images that pin a wheel), which callers refine by parsing."""


class Builds(Protocol):
    """Builds as persisted: state while they run, state and log once they end."""

    async def save(self, build: BuildRecord) -> None: ...

    async def get(self, build_id: str) -> BuildRecord | None: ...

    async def fail_interrupted(self, reason: str) -> int:
        """Builds a stopped daemon left queued or running end as failed; returns how many."""


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
