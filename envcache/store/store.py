"""The :class:`Store` upper layers receive: the repositories and blob storage of one daemon, and
the operations that span them.

Distribution's handlers call ``digest.Parse`` and then ``Upload.Commit``, one storage call that
verifies, moves, links and cleans up; the methods here have that shape too: ``commit_upload``,
``put_manifest``, ``write_blob`` each do every step of their job, in the order the contracts
of :mod:`envcache.store.interfaces` require (visible before indexed, indexed before linked).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import AsyncIterable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envcache.errors import NotFound
from envcache.oci import (
    MAX_MANIFEST_SIZE, ManifestInvalid, check_name, check_tag, config_digest, digest_bytes, is_digest, new_hasher,
    parse_digest, parse_manifest,
)
from envcache.store.errors import DigestMismatch, ManifestBlobUnknown, SizeMismatch, check_content
from envcache.store.interfaces import (
    BaseDigests, BlobDriver, BlobIndex, Builds, Environments, Images, LayerMap, Manifests, Metadata, PushLog,
    UploadSpool, Uploads, Wheels,
)
from envcache.store.records import FileEntry, StoredManifest, UploadSession

#: Is this upload session receiving bytes right now? (The registry knows; gc must not expire it.)
Busy = Callable[[str], bool]


@dataclass(frozen=True)
class StoreSettings:
    """Where the store lives: a data directory (SQLite + blob files) today."""

    data_dir: Path


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
    wheels: Wheels
    #: True for the process that holds the data directory's lock: only the owner runs the
    #: start-up clean-up, and only the owner may collect garbage.
    owner: bool = False
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

    # -- blobs ---------------------------------------------------------------------------------
    async def write_blob(self, data: bytes | AsyncIterable[bytes], expected_digest: str | None = None,
                         expected_size: int | None = None, media_type: str | None = None) -> tuple[str, int]:
        """Store and index verified bytes; returns ``(digest, size)``."""
        if isinstance(data, bytes):  # small (a manifest, a config): skip the write when it is stored
            digest = digest_bytes(data, parse_digest(expected_digest)[0] if expected_digest else "sha256")
            check_content(digest, len(data), expected_digest, expected_size)
            if await self.has_blob(digest):
                await self.blobs.record(digest, len(data), media_type)
                return digest, len(data)
        digest, size = await self.files.write(data, expected_digest, expected_size)
        await self.blobs.record(digest, size, media_type)
        return digest, size

    async def adopt_blob(self, path: Path, expected_digest: str | None = None, *, verified: bool = False,
                         media_type: str | None = None) -> tuple[str, int]:
        """Take a finished local file in as a blob (see :meth:`BlobDriver.adopt`) and index it."""
        digest, size = await self.files.adopt(path, expected_digest, verified=verified)
        await self.blobs.record(digest, size, media_type)
        return digest, size

    async def receive(self, chunks: AsyncIterable[bytes]) -> tuple[Path, str, int]:
        """Receive bytes into a scratch file, hashed (sha256) as they arrive: ``(path, digest,
        size)``. For content the caller checks before it may become a blob (then
        :meth:`adopt_blob` with ``verified=True``); the caller removes the file otherwise."""
        from envcache.store.files import pump

        path = self.files.scratch_dir() / f"received-{uuid.uuid4().hex}"
        hasher = new_hasher("sha256")
        try:
            with open(path, "wb") as out:
                size = await pump(chunks, out, hasher)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, f"sha256:{hasher.hexdigest()}", size

    async def put_blob(self, repository: str, data: AsyncIterable[bytes], expected_digest: str,
                       expected_size: int | None = None) -> tuple[str, int]:
        """A monolithic upload: store, index and make visible in ``repository``."""
        digest, size = await self.write_blob(data, expected_digest, expected_size)
        await self.blobs.link(repository, [digest])
        return digest, size

    async def has_blob(self, digest: str) -> bool:
        return await self.files.stat(digest) is not None

    async def blob_visible(self, repository: str, digest: str) -> bool:
        """Linked into ``repository`` and present."""
        return await self.blobs.linked(repository, digest) and await self.has_blob(digest)

    # -- manifests -----------------------------------------------------------------------------
    async def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """Store ``body`` byte for byte; ``reference`` is a tag (moved to it) or its digest (checked).

        An image manifest's config and layers must be present; the body becomes a blob, then
        the manifest is recorded with the links it needs and its tag, in one transaction.
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
        info = parse_manifest(body)
        declared = info.doc.get("mediaType")
        if declared is not None and declared != media_type:
            raise ManifestInvalid(f"manifest mediaType {declared!r} does not match Content-Type {media_type!r}")
        needed = [] if info.is_index else [d.digest for d in info.blobs]
        for blob in needed:
            if not await self.has_blob(blob):
                raise ManifestBlobUnknown(blob)
        await self.write_blob(body, digest, media_type=media_type)
        async with self.transaction():
            await self.manifests.put(repository, digest, media_type=media_type, size=len(body),
                                     subject=info.subject.digest if info.subject else None,
                                     artifact_type=info.artifact_type,
                                     annotations=json.dumps(info.annotations) if info.annotations else None, tag=tag)
            await self.blobs.link(repository, [*needed, digest])
        return digest

    async def get_manifest(self, repository: str, reference: str, *, with_body: bool = True) -> StoredManifest | None:
        """The manifest ``reference`` (tag or digest) names in ``repository``; body read only if asked."""
        row = await self.manifests.find(repository, reference)
        if row is None:
            return None
        body = b""
        if with_body:
            found = await self.files.read(row.digest)
            if found is None:
                return None
            body = found
        return StoredManifest(row.digest, row.media_type, body, row.size, row.subject)

    async def set_tag(self, repository: str, tag: str, digest: str) -> None:
        """Point ``tag`` at a manifest already stored in ``repository``."""
        check_name(repository)
        check_tag(tag)
        if await self.manifests.find(repository, digest) is None:
            raise NotFound(f"manifest {digest} is not in repository {repository}")
        await self.manifests.set_tag(repository, tag, digest)

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
        session = UploadSession(id=str(uuid.uuid4()), repository=repository, offset=0, created=now, updated=now)
        await self.spool.create_upload(session.id)
        await self.uploads.create(session)
        return session

    async def append_upload(self, session: UploadSession, chunks: AsyncIterable[bytes], *, hasher: Any = None,
                            expected_size: int | None = None) -> int:
        """Receive bytes at the session's offset; returns the new acknowledged offset. A short
        or long body (``expected_size``) raises SizeMismatch and acknowledges nothing."""
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
        them again). On a mismatch the session is dropped and DigestMismatch raised.
        """
        algorithm = parse_digest(digest)[0]
        actual = received or await self.spool.upload_digest(session.id, algorithm)
        if actual != digest:
            await self.drop_upload(session.id)
            raise DigestMismatch(f"uploaded content has digest {actual}, not {digest}")
        await self.spool.commit_upload(session.id, digest)
        await self.blobs.record(digest, session.offset, None)
        await self.blobs.link(session.repository, [digest])
        await self.drop_upload(session.id)
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

    data_dir = Path(settings.data_dir if isinstance(settings, StoreSettings) else settings)
    data_dir.mkdir(parents=True, exist_ok=True)
    files = LocalFiles(data_dir)
    sql = open_sqlite(data_dir / "envcache.db")
    store = Store(data_dir, sql.database, files, files, sql.blobs, sql.manifests, sql.uploads, sql.images, sql.builds,
                  sql.environments, sql.layers, sql.base_digests, sql.pushes, sql.wheels)
    store._lock_fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(store._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        store.owner = True
    except BlockingIOError:
        store.owner = False
    if store.owner:
        files.clear_temp()
        await store._reconcile_uploads()
    return store
