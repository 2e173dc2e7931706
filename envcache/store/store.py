"""The :class:`Store` upper layers receive: the repositories and blob storage of one daemon, and
the operations that span them.

Distribution's handlers call ``digest.Parse`` and then ``Upload.Commit``, one storage call that
verifies, moves, links and cleans up; the methods here have that shape too: ``commit_upload``,
``put_manifest``, ``write_blob``, ``mount_blob``, ``delete_blob`` each do every step of their
job, in the order the contracts of :mod:`envcache.store.interfaces` require: bytes staged and
verified outside any lock, then published and recorded as a use in one short transaction, so
that gc — which deletes only under that same lock, after re-checking — can never take away what
a writer is acknowledging.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
import uuid
from collections.abc import AsyncIterable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envcache.errors import InvalidInput, NotFound
from envcache.oci import (
    MAX_MANIFEST_SIZE, ManifestInvalid, check_name, check_tag, config_digest, digest_bytes, is_digest, new_hasher,
    parse_digest, parse_manifest,
)
from envcache.store.errors import (
    MB, BlobInUse, DigestMismatch, InsufficientStorage, ManifestBlobUnknown, SizeMismatch,
)
from envcache.store.interfaces import (
    Activity, BaseDigests, BlobDriver, BlobIndex, Builds, Environments, Images, LayerMap, Manifests, Metadata, PushLog,
    StepResults, UploadSpool, Uploads, Wheels,
)
from envcache.store.records import FileEntry, StagedBlob, StoredManifest, UploadSession
from envcache.store.references import manifest_refs

#: Is this upload session receiving bytes right now? (The registry knows; gc must not expire it.)
Busy = Callable[[str], bool]


#: Default free-space floor: new blob writes are refused below it (room for the index and gc).
DEFAULT_MIN_FREE = 64 * MB
#: gc keeps anything used (or read) more recently than this many seconds: see :mod:`envcache.store.gc`.
DEFAULT_GRACE = 3600.0


@dataclass(frozen=True)
class StoreSettings:
    """Where the store lives — a data directory (SQLite + blob files) today — and how much of its
    filesystem new blob writes must leave free (``min_free_bytes``)."""

    data_dir: Path
    min_free_bytes: int = DEFAULT_MIN_FREE


@dataclass
class Store:
    """One daemon's metadata repositories and blob storage."""

    data_dir: Path
    metadata: Metadata
    files: BlobDriver
    spool: UploadSpool
    blobs: BlobIndex
    manifests: Manifests
    uploads: Uploads
    images: Images
    builds: Builds
    environments: Environments
    layers: LayerMap
    base_digests: BaseDigests
    pushes: PushLog
    activity: Activity
    wheels: Wheels
    steps: StepResults
    #: True for the process that holds the data directory's lock: only the owner runs the
    #: start-up clean-up, and only the owner may collect garbage.
    owner: bool = False
    #: New blob writes are refused (InsufficientStorage) when they would leave less free.
    min_free_bytes: int = DEFAULT_MIN_FREE
    #: One gc at a time (this process owns the data directory).
    gc_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _lock_fd: int = -1

    @property
    def schema_version(self) -> int:
        return self.metadata.schema_version

    def transaction(self, *, write: bool = True) -> AbstractAsyncContextManager[None]:
        return self.metadata.transaction(write=write)

    async def close(self) -> None:
        self.metadata.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    # -- space -------------------------------------------------------------------------------
    def check_space(self, incoming: int = 0) -> None:
        """Refuse a new write that would leave less than the free-space floor: deletes and gc
        must always find room for the index's log (issue 13, full disk)."""
        free = self.files.free_bytes()
        if free is not None and free - incoming < self.min_free_bytes:
            raise InsufficientStorage(free, self.min_free_bytes)

    # -- blobs ---------------------------------------------------------------------------------
    async def _commit(self, staged: StagedBlob, media_type: str | None = None, repository: str | None = None) -> None:
        """Publish staged bytes and record the use in one transaction (interfaces, rule 3)."""
        try:
            async with self.transaction():
                await self.files.publish(staged)
                await self.blobs.record(staged.digest, staged.size, media_type)
                if repository is not None:
                    await self.blobs.link(repository, [staged.digest])
        finally:
            await self.files.discard(staged)

    async def write_blob(self, data: bytes | AsyncIterable[bytes], expected_digest: str | None = None,
                         expected_size: int | None = None, media_type: str | None = None,
                         repository: str | None = None) -> tuple[str, int]:
        """Store, verify and index bytes (and link them into ``repository``); returns ``(digest, size)``."""
        self.check_space(len(data) if isinstance(data, bytes) else expected_size or 0)
        staged = await self.files.stage(data, expected_digest, expected_size)
        await self._commit(staged, media_type, repository)
        return staged.digest, staged.size

    async def adopt_blob(self, path: Path, expected_digest: str | None = None, *, verified: bool = False,
                         media_type: str | None = None) -> tuple[str, int]:
        """Take a finished local file in as a blob (see :meth:`BlobDriver.stage_file`) and index it."""
        staged = await self.files.stage_file(path, expected_digest, verified=verified)
        await self._commit(staged, media_type)
        return staged.digest, staged.size

    async def receive(self, chunks: AsyncIterable[bytes], path: Path) -> tuple[str, int]:
        """Receive bytes into ``path`` (inside a claimed :meth:`BlobDriver.scratch` directory),
        hashed (sha256) as they arrive: ``(digest, size)``. For content the caller checks before it
        may become a blob (then :meth:`adopt_blob` with ``verified=True``)."""
        from envcache.store.files import pump

        hasher = new_hasher("sha256")
        with open(path, "wb") as out:
            size = await pump(chunks, out, hasher)
        return f"sha256:{hasher.hexdigest()}", size

    async def has_blob(self, digest: str) -> bool:
        return await self.files.stat(digest) is not None

    async def blob_visible(self, repository: str, digest: str) -> bool:
        """Linked into ``repository`` and present."""
        return await self.blobs.linked(repository, digest) and await self.has_blob(digest)

    async def mount_blob(self, repository: str, digest: str, source: str | None = None) -> bool:
        """Cross-repository mount: link a stored blob (visible in ``source`` when given) into
        ``repository``, as a use gc respects; False when it is not there to mount."""
        async with self.transaction():
            available = await self.blob_visible(source, digest) if source else await self.has_blob(digest)
            if not available or await self.blobs.use([digest]):
                return False
            await self.blobs.link(repository, [digest])
        return True

    async def delete_blob(self, repository: str, digest: str) -> bool:
        """Remove a blob from ``repository`` (False when it was not there). Refused with
        BlobInUse while a manifest stored there names it (config, layer, child, or the manifest
        itself): the image would break. gc removes the bytes once nothing uses them."""
        await self.files.release_reserve()
        async with self.transaction():
            if not await self.blobs.linked(repository, digest):
                return False
            users = [m.digest for m in await self.manifests.all(repository) if await self._names(m.digest, digest)]
            if users:
                raise BlobInUse(digest, users)
            return await self.blobs.unlink(repository, digest)

    async def _names(self, manifest: str, digest: str) -> bool:
        if manifest == digest:
            return True
        body = await self.files.read(manifest)
        try:
            refs = manifest_refs(body or b"")
        except InvalidInput:
            return False
        return digest in refs.blobs or digest in refs.children

    async def flush_reads(self) -> None:
        """Write batched read times, best effort: a full disk only delays them."""
        try:
            await self.blobs.flush_reads()
        except InsufficientStorage:
            pass

    # -- manifests -----------------------------------------------------------------------------
    async def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str,
                           tags: Sequence[str] = ()) -> str:
        """Store ``body`` byte for byte; ``reference`` is a tag (moved to it) or its digest
        (checked); ``tags`` are moved to it too.

        An image manifest's config and layers must be stored (each counts as used); the body
        becomes a blob and the manifest is recorded with the links it needs and its tags, all in
        one transaction.
        """
        check_name(repository)
        if len(body) > MAX_MANIFEST_SIZE:
            raise ManifestInvalid(f"manifest is {len(body)} bytes; the limit is {MAX_MANIFEST_SIZE}")
        if is_digest(reference):
            digest = digest_bytes(body, parse_digest(reference)[0])
            if digest != reference:
                raise DigestMismatch(f"manifest digest is {digest}, but it was pushed as {reference}")
            tag = None
        else:
            tag = check_tag(reference)
            digest = digest_bytes(body)
        for extra in tags:
            check_tag(extra)
        info = parse_manifest(body)
        declared = info.doc.get("mediaType")
        if declared is not None and declared != media_type:
            raise ManifestInvalid(f"manifest mediaType {declared!r} does not match Content-Type {media_type!r}")
        needed = [] if info.is_index else [d.digest for d in info.blobs]
        self.check_space(len(body))
        staged = await self.files.stage(body, digest)
        try:
            async with self.transaction():
                missing = await self.blobs.use(needed)
                for blob in needed:
                    if blob not in missing and not await self.has_blob(blob):
                        missing.append(blob)
                if missing:
                    raise ManifestBlobUnknown(missing[0])
                await self.files.publish(staged)
                await self.blobs.record(digest, len(body), media_type)
                await self.manifests.put(repository, digest, media_type=media_type, size=len(body),
                                         subject=info.subject.digest if info.subject else None,
                                         artifact_type=info.artifact_type,
                                         annotations=json.dumps(info.annotations) if info.annotations else None,
                                         tag=tag)
                for extra in tags:
                    await self.manifests.set_tag(repository, extra, digest)
                await self._use_tree(repository, [child.digest for child in info.manifests])
                await self.blobs.link(repository, [*needed, digest])
        finally:
            await self.files.discard(staged)
        return digest

    async def delete_manifest(self, repository: str, reference: str) -> bool:
        """By digest: the manifest, its tags and its own link; by tag: just the tag. A delete
        works on a full disk too (it may use the reserve kept for that)."""
        await self.files.release_reserve()
        if is_digest(reference):
            return await self.manifests.delete(repository, reference)
        return await self.manifests.delete_tag(repository, reference)

    async def get_manifest(self, repository: str, reference: str, *, with_body: bool = True) -> StoredManifest | None:
        """The manifest ``reference`` (tag or digest) names in ``repository``; body read only if asked.

        Reading the body is a read of the manifest and of every blob it names: whoever got it
        (a client pulling, a build loading a stage, a push upstream) fetches those blobs next,
        and gc keeps what was read within its grace period — also once the tag is gone (an
        evicted image mid-pull). The row is looked up again after the reads are noted: gc
        deletes a manifest's row before any blob, so either it sees the reads or this is a 404."""
        row = await self.manifests.find(repository, reference)
        if row is None:
            return None
        body = b""
        if with_body:
            found = await self.files.read(row.digest)
            if found is None:
                return None
            body = found
            try:
                named = manifest_refs(body).blobs
            except InvalidInput:
                named = []  # stored as pushed; not ours to judge here (fsck is)
            for digest in (row.digest, *named):
                await self.blobs.touch(digest)
            if await self.manifests.find(repository, row.digest) is None:
                return None  # swept while we read: gc deletes manifests before blobs, so 404 now
        return StoredManifest(row.digest, row.media_type, body, row.size, row.subject)

    async def set_tag(self, repository: str, tag: str, digest: str) -> None:
        """Point ``tag`` at a manifest already stored in ``repository``."""
        check_name(repository)
        check_tag(tag)
        async with self.transaction():  # gc cannot remove the manifest between the check and the tag
            if await self.manifests.find(repository, digest) is None:
                raise NotFound(f"manifest {digest} is not in repository {repository}")
            await self.manifests.set_tag(repository, tag, digest)
            await self._use_tree(repository, [digest])

    async def _use_tree(self, repository: str, digests: Sequence[str]) -> None:
        """Count a use of these stored manifests and of everything they name, transitively: a new
        tag or index makes all of it reachable at once, and gc may have marked any of it dead
        before (interfaces, rule 1)."""
        todo, seen = list(digests), set()
        while todo:
            digest = todo.pop()
            if digest in seen or await self.manifests.find(repository, digest) is None:
                continue
            seen.add(digest)
            await self.manifests.use(repository, [digest])
            try:
                refs = manifest_refs(await self.files.read(digest) or b"")
            except InvalidInput:
                continue
            await self.blobs.use([digest, *refs.blobs])
            todo += refs.children

    async def config_digest(self, repository: str, reference: str) -> tuple[str, str] | None:
        """(manifest digest, config digest) of ``repository:reference``, or None.

        The manifest digest is the platform entry :func:`envcache.oci.config_digest` picked when
        ``reference`` names an index, so an image loaded by it is exactly the one whose config
        digest keys the image.
        """
        manifest = await self.get_manifest(repository, reference)
        if manifest is None:
            return None
        chosen = manifest.digest

        async def child(digest: str) -> bytes | None:
            nonlocal chosen
            chosen = digest
            found = await self.get_manifest(repository, digest)
            return found.body if found else None

        digest = await config_digest(manifest.body, child)
        return (chosen, digest) if digest else None

    # -- upload sessions -------------------------------------------------------------------------
    async def create_upload(self, repository: str) -> UploadSession:
        check_name(repository)
        await self.manifests.ensure_repository(repository)
        now = time.time()
        self.check_space()
        session = UploadSession(id=str(uuid.uuid4()), repository=repository, offset=0, created=now, updated=now)
        # The row first: spool bytes no session owns are gc's to remove.
        await self.uploads.create(session)
        await self.spool.create_upload(session.id)
        return session

    async def append_upload(self, session: UploadSession, chunks: AsyncIterable[bytes], *, hasher: Any = None,
                            expected_size: int | None = None) -> int:
        """Receive bytes at the session's offset; returns the new acknowledged offset. A short
        or long body (``expected_size``) raises SizeMismatch and acknowledges nothing; so does a
        disk below the free-space floor (InsufficientStorage)."""
        self.check_space(expected_size or 0)
        written = 0

        async def checked() -> AsyncIterable[bytes]:
            nonlocal written
            async for chunk in chunks:
                written += len(chunk)
                yield chunk
            if expected_size is not None and written != expected_size:
                raise SizeMismatch(f"received {written} bytes, expected {expected_size}", received=written)

        await self.spool.append(session.id, session.offset, checked(), hasher)
        offset = session.offset + written
        await self.uploads.set_offset(session.id, offset)
        return offset

    async def commit_upload(self, session: UploadSession, digest: str, *, received: str | None = None) -> int:
        """Verify the session's bytes against ``digest``, make them blob ``digest``, index it,
        link it into the session's repository and end the session; returns the blob's size.

        ``received`` is the digest the caller computed while the bytes arrived (saves reading
        them again). On a mismatch the session is dropped and DigestMismatch raised. If the
        transaction fails (a full disk), the bytes go back to the session, which stays resumable.
        """
        algorithm = parse_digest(digest)[0]
        actual = received or await self.spool.upload_digest(session.id, algorithm)
        if actual != digest:
            await self.drop_upload(session.id)
            raise DigestMismatch(f"uploaded content has digest {actual}, not {digest}")
        staged = await self.spool.stage_upload(session.id, digest)
        try:
            async with self.transaction():
                await self.files.publish(staged)
                await self.blobs.record(digest, session.offset, None)
                await self.blobs.link(session.repository, [digest])
                await self.uploads.delete(session.id)
        except BaseException:
            async with self.transaction():
                if await self.blobs.known([digest]):
                    await self.drop_upload(session.id)  # recorded by another writer meanwhile: done
                else:
                    await self.files.unpublish(staged)
            raise
        await self.spool.delete_upload(session.id)
        return session.offset

    async def drop_upload(self, session_id: str) -> bool:
        await self.spool.delete_upload(session_id)
        return await self.uploads.delete(session_id)

    async def expire_uploads(self, ttl: float, busy: Busy | None = None, *, now: float | None = None,
                             dry_run: bool = False) -> list[FileEntry]:
        """Drop sessions idle for more than ``ttl`` seconds, except those ``busy`` says are
        receiving bytes; returns what was (or, with ``dry_run``, would be) dropped. The one
        expiry path: the daemon's periodic sweep and gc both call it."""
        since = (time.time() if now is None else now) - ttl
        sizes = {entry.key: entry for entry in await self.spool.upload_entries()}
        expired = []
        for session_id in await self.uploads.idle(since):
            if busy is not None and busy(session_id):
                continue
            expired.append(sizes.get(session_id) or FileEntry(session_id, 0, 0.0))
            if not dry_run:
                await self.drop_upload(session_id)
        return expired

    # -- start-up housekeeping ---------------------------------------------------------------------
    async def _reconcile_uploads(self) -> None:
        """Make every upload session resumable from its last acknowledged offset.

        A chunk that was still streaming when the daemon stopped was never acknowledged, so the
        data is cut back to the recorded offset; data without a session (or sessions without
        data) are dropped. Nothing here ever turns a partial upload into a blob.
        """
        known: set[str] = set()
        for session in await self.uploads.all():
            size = await self.spool.upload_size(session.id)
            if size is None:
                await self.uploads.delete(session.id)
                continue
            if size < session.offset:
                # Acknowledged bytes were lost (power failure before writeback): unrecoverable.
                await self.drop_upload(session.id)
                continue
            if size > session.offset:
                await self.spool.truncate_upload(session.id, session.offset)
            known.add(session.id)
        for entry in await self.spool.upload_entries():
            if entry.key not in known:
                await self.spool.delete_upload(entry.key)


async def open_store(settings: StoreSettings | Path | str) -> Store:
    """Open (creating or migrating) the store ``settings`` names.

    Start-up housekeeping deletes temp files and cuts uploads back; only the process that owns
    the data directory may do that, or a second opener (a CLI command, a test looking at a
    running daemon's store) would destroy the owner's writes in progress.
    """
    from envcache.store.files import LocalFiles
    from envcache.store.sqlite import open_sqlite

    if not isinstance(settings, StoreSettings):
        settings = StoreSettings(Path(settings))
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    files = LocalFiles(data_dir)
    await files.release_reserve()  # on a full disk, SQLite needs room to open its WAL
    sql = open_sqlite(data_dir / "envcache.db")
    store = Store(data_dir, sql.database, files, files, sql.blobs, sql.manifests, sql.uploads, sql.images, sql.builds,
                  sql.environments, sql.layers, sql.base_digests, sql.pushes, sql.activity, sql.wheels, sql.steps,
                  min_free_bytes=settings.min_free_bytes)
    store._lock_fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(store._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        store.owner = True
    except BlockingIOError:
        store.owner = False
    if store.owner:
        files.clear_temp()
        await store._reconcile_uploads()
        await files.restore_reserve(store.min_free_bytes)
    return store
