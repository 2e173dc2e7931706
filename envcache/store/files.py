"""Blob files by digest under a data directory: the embedded blob driver (and upload spool).

Every write goes the same way. **Stage**: bytes stream into a private temp file under ``tmp/``
while they are hashed; the digest and size are checked against what the caller expected; the
file is fsync'd. The writer holds an ``flock`` on its temp file from creation until it is done,
so gc never sweeps a write in progress, however long it idles. **Publish**, inside the store's
transaction that records the blob: if ``blobs/<algorithm>/<first two hex>/<hex>`` is absent,
the staged file is renamed there and the directory fsync'd; if it is present it is kept (gc
deletes blob files only under that same transaction lock, after checking that no row names
them, so a file seen there cannot vanish before the use is committed). A reader either sees no
file or the complete, verified one; concurrent pushes of one blob end as one file.

Uploads in progress live in ``uploads/<session id>``; their bytes are staged where they are and
published by the same rename. A full filesystem (``ENOSPC``) is
:class:`~envcache.store.errors.InsufficientStorage`, never an internal error, and leaves nothing
behind. ``reserve`` is a small file the daemon holds so that deletes and gc can always write the
index even when something else filled the disk; it is released before they run on a full disk.
The layout is written down in :mod:`envcache.store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from envcache.oci import is_digest, new_hasher, parse_digest
from envcache.store.errors import InsufficientStorage, check_content
from envcache.store.records import FileEntry, StagedBlob

CHUNK = 1 << 20
# Received data is handed to the writer thread in batches of about this size.
_BATCH = 1 << 20
#: Size of ``<data_dir>/reserve``: room for the WAL of the deletes and the gc that free a full disk.
RESERVE_BYTES = 8 << 20


@contextlib.contextmanager
def disk_full_is_507() -> Iterator[None]:
    """ENOSPC/EDQUOT become the caller's clear insufficient-storage error."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage() from exc
        raise


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_file(path: Path, algorithm: str = "sha256") -> tuple[str, int]:
    """``(digest, size)`` of a file, read in 1 MiB chunks."""
    hasher = new_hasher(algorithm)
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return f"{algorithm}:{hasher.hexdigest()}", size


async def pump(chunks: AsyncIterable[bytes], out: BinaryIO, hasher: Any = None) -> int:
    """Write (and hash) ``chunks`` to ``out``; returns the byte count.

    Writing and hashing run on a worker thread (both release the GIL) while the event loop
    receives the next batch, so a push uses two cores instead of one. Batches are written in
    order: each waits for the previous one. On failure the in-flight batch is awaited first,
    so the caller can safely truncate the file afterwards.
    """
    loop = asyncio.get_running_loop()

    def work(data: bytes) -> None:
        out.write(data)
        if hasher is not None:
            hasher.update(data)

    pending: asyncio.Future[None] | None = None
    batch: list[bytes] = []
    batched = total = 0
    try:
        async for chunk in chunks:
            batch.append(chunk)
            batched += len(chunk)
            if batched >= _BATCH:
                data = batch[0] if len(batch) == 1 else b"".join(batch)
                batch, batched = [], 0
                if pending is not None:
                    await pending
                pending = loop.run_in_executor(None, work, data)
                total += len(data)
        if batch:
            data = b"".join(batch)
            if pending is not None:
                await pending
            pending = loop.run_in_executor(None, work, data)
            total += len(data)
        if pending is not None:
            await pending
            pending = None
    finally:
        if pending is not None and not pending.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
    return total


def _newest(path: Path) -> float:
    """Latest of mtime and ctime (a rename into place updates ctime); 0 when gone."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0.0
    return max(st.st_mtime, st.st_ctime)


def _tree(path: Path) -> tuple[int, float]:
    """(total size, newest change) of a file or a directory tree."""
    if not path.is_dir() or path.is_symlink():
        try:
            return path.lstat().st_size, _newest(path)
        except FileNotFoundError:
            return 0, 0.0
    size, newest = 0, _newest(path)
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            child = Path(dirpath) / name
            with contextlib.suppress(FileNotFoundError):
                size += child.lstat().st_size
            newest = max(newest, _newest(child))
    return size, newest


def _locked(path: Path) -> int:
    """An fd holding an exclusive flock on ``path``: the writer's claim gc respects."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class LocalFiles:
    """``blobs/``, ``tmp/`` and ``uploads/`` of a data directory (the :class:`~envcache.store.
    interfaces.BlobDriver` and :class:`~envcache.store.interfaces.UploadSpool` of the embedded
    store). File operations are quick local calls; hashing and fsync of large files go to a
    worker thread."""

    name = "files"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.root = data_dir / "blobs"
        self.tmp = data_dir / "tmp"
        self.uploads = data_dir / "uploads"
        self.reserve = data_dir / "reserve"
        for directory in (self.root, self.tmp, self.uploads):
            directory.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where the blob ``digest`` lives (whether or not it exists); validates the digest."""
        algorithm, hexdigest = parse_digest(digest)
        return self.root / algorithm / hexdigest[:2] / hexdigest

    # -- reading -----------------------------------------------------------------------------
    async def stat(self, digest: str) -> FileEntry | None:
        path = self.path(digest)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return FileEntry(str(path.relative_to(self.data_dir)), st.st_size, max(st.st_mtime, st.st_ctime), digest)

    async def read(self, digest: str) -> bytes | None:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            return None

    def open(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")

    def local_path(self, digest: str) -> Path | None:
        return self.path(digest)

    def url_for(self, digest: str) -> str | None:
        return None  # served from the file (sendfile); an object store answers with a signed URL

    @contextlib.contextmanager
    def scratch(self, prefix: str) -> Iterator[Path]:
        """A private directory under ``tmp/`` for one job, claimed (flock'd) until it ends."""
        with tempfile.TemporaryDirectory(prefix=prefix, dir=self.tmp) as name:
            fd = _locked(Path(name))
            try:
                yield Path(name)
            finally:
                os.close(fd)

    # -- space ---------------------------------------------------------------------------------
    def free_bytes(self) -> int:
        return shutil.disk_usage(self.data_dir).free

    async def release_reserve(self) -> None:
        """Give the reserve back to the filesystem when it is fuller than the reserve is large."""
        if self.free_bytes() < RESERVE_BYTES:
            self.reserve.unlink(missing_ok=True)

    async def restore_reserve(self, floor: int) -> None:
        """Hold the reserve again once that leaves ``floor`` bytes free (best effort)."""
        if self.reserve.exists() or self.free_bytes() < floor + RESERVE_BYTES:
            return
        try:
            with open(self.reserve, "wb") as out:
                os.posix_fallocate(out.fileno(), 0, RESERVE_BYTES)
        except OSError:
            self.reserve.unlink(missing_ok=True)

    # -- staging and publishing --------------------------------------------------------------------
    async def stage(self, chunks: bytes | AsyncIterable[bytes], expected_digest: str | None = None,
                    expected_size: int | None = None) -> StagedBlob:
        algorithm = parse_digest(expected_digest)[0] if expected_digest else "sha256"
        hasher = new_hasher(algorithm)
        if isinstance(chunks, bytes | bytearray | memoryview):  # manifests and configs: kept in memory
            hasher.update(chunks)
            digest = f"{algorithm}:{hasher.hexdigest()}"
            check_content(digest, len(chunks), expected_digest, expected_size)
            return StagedBlob(digest, len(chunks), data=bytes(chunks))
        fd, tmp = self._new_temp()
        try:
            with disk_full_is_507():
                with open(fd, "wb", closefd=False) as out:
                    size = await pump(chunks, out, hasher)
                digest = f"{algorithm}:{hasher.hexdigest()}"
                check_content(digest, size, expected_digest, expected_size)
                await asyncio.to_thread(os.fsync, fd)
        except BaseException:
            await self.discard(StagedBlob("", 0, str(tmp.relative_to(self.data_dir)), handle=fd))
            raise
        return StagedBlob(digest, size, str(tmp.relative_to(self.data_dir)), handle=fd)

    async def stage_file(self, path: Path, expected_digest: str | None = None, *,
                         verified: bool = False) -> StagedBlob:
        algorithm = parse_digest(expected_digest)[0] if expected_digest else "sha256"
        if verified and expected_digest is not None:
            digest, size = expected_digest, path.stat().st_size
        else:
            digest, size = await asyncio.to_thread(hash_file, path, algorithm)
            check_content(digest, size, expected_digest, None)
        fd, tmp = self._new_temp()
        os.close(fd)  # only the name: the file taken in replaces it, and is locked below
        staged = StagedBlob(digest, size, str(tmp.relative_to(self.data_dir)))
        try:
            with disk_full_is_507():
                try:
                    os.replace(path, tmp)  # same filesystem: no copy
                except OSError:
                    await asyncio.to_thread(shutil.copyfile, path, tmp)
                    # The copy must be re-verified: the source could have changed under us.
                    check_content(*await asyncio.to_thread(hash_file, tmp, algorithm), digest, size)
                staged = StagedBlob(digest, size, staged.key, handle=_locked(tmp))
                await asyncio.to_thread(os.fsync, staged.handle)
        except BaseException:
            await self.discard(staged)
            raise
        return staged

    async def stage_upload(self, session_id: str, digest: str) -> StagedBlob:
        path = self.upload_path(session_id)
        fd = os.open(path, os.O_RDONLY)
        try:
            with disk_full_is_507():
                await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)
        return StagedBlob(digest, path.stat().st_size, str(path.relative_to(self.data_dir)))

    async def publish(self, staged: StagedBlob) -> None:
        final = self.path(staged.digest)
        if final.exists():
            return  # identical content, verified when it was placed
        with disk_full_is_507():
            final.parent.mkdir(parents=True, exist_ok=True)
            if staged.data is not None:
                fd, tmp = self._new_temp()
                try:
                    with open(fd, "wb", closefd=False) as out:
                        out.write(staged.data)
                        out.flush()
                        os.fsync(fd)
                    os.replace(tmp, final)
                finally:
                    os.close(fd)
                    tmp.unlink(missing_ok=True)
            else:
                os.replace(self.data_dir / staged.key, final)
            fsync_dir(final.parent)

    async def unpublish(self, staged: StagedBlob) -> None:
        source = self.data_dir / staged.key
        if staged.data is None and not source.exists() and self.path(staged.digest).exists():
            os.replace(self.path(staged.digest), source)

    async def discard(self, staged: StagedBlob) -> None:
        if staged.handle >= 0:
            os.close(staged.handle)  # releases the flock
        if staged.key.startswith("tmp/"):
            (self.data_dir / staged.key).unlink(missing_ok=True)

    async def delete(self, digests: Sequence[str]) -> list[str]:
        return await asyncio.to_thread(self._unlink, [self.path(digest) for digest in digests], digests)

    @staticmethod
    def _unlink(paths: list[Path], digests: Sequence[str]) -> list[str]:
        gone = []
        for path, digest in zip(paths, digests):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                gone.append(digest)
        return gone

    def _new_temp(self) -> tuple[int, Path]:
        """A fresh temp file next to the blob tree (same filesystem, so rename is atomic), locked
        by this writer until it is discarded."""
        with disk_full_is_507():
            fd, name = tempfile.mkstemp(dir=self.tmp, prefix="blob-")
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd, Path(name)

    # -- listing, checking, quarantine (gc and fsck) --------------------------------------------
    async def blobs(self) -> AsyncIterator[FileEntry]:
        for entry in await asyncio.to_thread(self._list_blobs):  # a stat per file: off the event loop
            yield entry

    def _list_blobs(self) -> list[FileEntry]:
        found = []
        root = self.root
        for algorithm_dir in sorted(root.iterdir()) if root.is_dir() else []:
            for fan in sorted(algorithm_dir.iterdir()) if algorithm_dir.is_dir() else [algorithm_dir]:
                for path in sorted(fan.iterdir()) if fan.is_dir() else [fan]:
                    if path.is_dir() and not path.is_symlink():
                        continue
                    digest = f"{algorithm_dir.name}:{path.name}"
                    good = path.is_file() and is_digest(digest) and fan.name == path.name[:2] \
                        and fan.parent == algorithm_dir
                    size, modified = _tree(path)
                    found.append(FileEntry(str(path.relative_to(self.data_dir)), size, modified,
                                           digest if good else None))
        return found

    async def digest_of(self, entry: FileEntry) -> tuple[str, int]:
        """Re-hash a stored object with the algorithm its name says."""
        algorithm = (entry.digest or "sha256:").split(":", 1)[0]
        return await asyncio.to_thread(hash_file, self.data_dir / entry.key, algorithm)

    async def quarantine(self, entry: FileEntry, name: str) -> str:
        """Move an object out of the blob tree (an atomic rename); returns where it went."""
        path = self.data_dir / entry.key
        quarantine = self.data_dir / "quarantine"
        quarantine.mkdir(exist_ok=True)
        target = quarantine / name
        if target.exists():
            target = quarantine / f"{name}.{time.time_ns()}"
        os.replace(path, target)
        fsync_dir(quarantine)
        fsync_dir(path.parent)
        return str(target)

    async def temp_entries(self) -> list[FileEntry]:
        return [FileEntry(entry.name, *_tree(entry)) for entry in sorted(self.tmp.iterdir())]

    async def remove_temp(self, key: str, older_than: float) -> bool:
        return _remove_unclaimed(self.tmp / key, older_than)

    def clear_temp(self) -> None:
        """Temp files are private to one write; any left at start-up are from a crash."""
        for entry in self.tmp.iterdir():
            _remove(entry)

    # -- the upload spool --------------------------------------------------------------------------
    def upload_path(self, session_id: str) -> Path:
        return self.uploads / session_id

    async def create_upload(self, session_id: str) -> None:
        with disk_full_is_507():
            self.upload_path(session_id).touch()

    async def append(self, session_id: str, offset: int, chunks: AsyncIterable[bytes], hasher: Any = None) -> int:
        """Write ``chunks`` at ``offset``; returns the bytes written. On any failure the data is
        cut back to ``offset``, so a half-received chunk is never kept. The writer holds an
        flock on the file meanwhile (gc leaves claimed spool files alone)."""
        with open(self.upload_path(session_id), "r+b") as out:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX)
            out.seek(offset)
            try:
                with disk_full_is_507():
                    return await pump(chunks, out, hasher)
            except BaseException:
                out.truncate(offset)
                raise

    async def upload_size(self, session_id: str) -> int | None:
        try:
            return self.upload_path(session_id).stat().st_size
        except FileNotFoundError:
            return None

    async def truncate_upload(self, session_id: str, offset: int) -> None:
        os.truncate(self.upload_path(session_id), offset)

    async def upload_digest(self, session_id: str, algorithm: str) -> str:
        return (await asyncio.to_thread(hash_file, self.upload_path(session_id), algorithm))[0]

    async def delete_upload(self, session_id: str) -> None:
        _remove(self.upload_path(session_id))

    async def remove_upload_leftover(self, key: str, older_than: float) -> bool:
        return _remove_unclaimed(self.uploads / key, older_than)

    async def upload_entries(self) -> list[FileEntry]:
        return [FileEntry(entry.name, *_tree(entry)) for entry in sorted(self.uploads.iterdir())]


def _remove_unclaimed(path: Path, older_than: float) -> bool:
    """Remove ``path`` unless a writer holds its flock or it changed since ``older_than``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # being written right now
        if _tree(path)[1] >= older_than:
            return False
        _remove(path)
        return True
    finally:
        os.close(fd)
