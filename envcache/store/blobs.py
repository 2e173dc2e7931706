"""Blob files by digest: written once, verified, then immutable.

Every write goes the same way: bytes stream into a private temp file under ``tmp/`` while they
are hashed; the digest and size are checked against what the caller expected; the file is
fsync'd and renamed to ``blobs/<algorithm>/<first two hex>/<hex>``; the directory is fsync'd.
A reader therefore either sees no file or the complete, verified one. Two writers of the same
content each use their own temp file; the second rename finds the file present and discards its
copy, so concurrent pushes of one blob end as one file and every push succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any, BinaryIO

import sqlite_utils

from envcache.errors import InvalidInput
from envcache.oci import new_hasher, parse_digest

CHUNK = 1 << 20
# Received data is handed to the writer thread in batches of about this size.
_BATCH = 1 << 20
# Updating ``last_access`` on every read would turn each GET into a write; once a minute per
# blob is plenty for GC decisions.
_TOUCH_INTERVAL = 60.0


class DigestMismatch(InvalidInput):
    """Content did not hash to the digest the client named (OCI ``DIGEST_INVALID``)."""


class SizeMismatch(InvalidInput):
    """Content length differs from the size the client declared (OCI ``SIZE_INVALID``)."""


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """The ``blobs/`` tree plus its ``blobs`` table (size, media type, last access)."""

    def __init__(self, root: Path, tmp: Path, db: sqlite_utils.Database) -> None:
        self.root = root
        self.tmp = tmp
        self.db = db
        self._touched: dict[str, float] = {}

    def path(self, digest: str) -> Path:
        """Where the blob ``digest`` lives (whether or not it exists); validates the digest."""
        algorithm, hexdigest = parse_digest(digest)
        return self.root / algorithm / hexdigest[:2] / hexdigest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int | None:
        """Size of a stored blob, or None when absent."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def touch(self, digest: str) -> None:
        """Record a read, at most once per interval per blob."""
        now = time.time()
        if now - self._touched.get(digest, 0.0) < _TOUCH_INTERVAL:
            return
        self._touched[digest] = now
        with self.db.conn:
            self.db.execute("UPDATE blobs SET last_access = ? WHERE digest = ?", [now, digest])

    def new_temp(self) -> tuple[int, Path]:
        """A fresh temp file next to the blob tree (same filesystem, so rename is atomic)."""
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="blob-")
        return fd, Path(name)

    async def write(
        self,
        chunks: bytes | AsyncIterable[bytes],
        expected_digest: str | None = None,
        expected_size: int | None = None,
        media_type: str | None = None,
    ) -> tuple[str, int]:
        """Stream ``chunks`` into the store; returns the verified ``(digest, size)``."""
        algorithm = parse_digest(expected_digest)[0] if expected_digest else "sha256"
        hasher = new_hasher(algorithm)
        fd, tmp = self.new_temp()
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(chunks, bytes | bytearray | memoryview):
                    hasher.update(chunks)
                    out.write(chunks)
                    size = len(chunks)
                else:
                    size = await pump(chunks, out, hasher)
                digest = f"{algorithm}:{hasher.hexdigest()}"
                self._verify(digest, size, expected_digest, expected_size)
            # fsync + rename + directory fsync off the event loop; the index row on it
            # (the SQLite connection belongs to the loop's thread).
            await asyncio.to_thread(self.place, tmp, digest)
            self.record(digest, size, media_type)
        finally:
            tmp.unlink(missing_ok=True)
        return digest, size

    def write_bytes(self, data: bytes, expected_digest: str | None = None, media_type: str | None = None) -> str:
        """Synchronous write of a small blob (manifests); returns its digest."""
        algorithm = parse_digest(expected_digest)[0] if expected_digest else "sha256"
        hasher = new_hasher(algorithm)
        hasher.update(data)
        digest = f"{algorithm}:{hasher.hexdigest()}"
        self._verify(digest, len(data), expected_digest, None)
        if self.exists(digest):
            self.record(digest, len(data), media_type)
            return digest
        fd, tmp = self.new_temp()
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            self.commit(tmp, digest, len(data), media_type)
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    def write_file(self, path: Path, expected_digest: str | None = None,
                   media_type: str | None = None) -> tuple[str, int]:
        """Take a finished file into the store, verified; moves it when it is on our filesystem."""
        algorithm = parse_digest(expected_digest)[0] if expected_digest else "sha256"
        digest, size = hash_file(path, algorithm)
        self._verify(digest, size, expected_digest, None)
        fd, tmp = self.new_temp()
        os.close(fd)
        try:
            try:
                os.replace(path, tmp)  # same filesystem: no copy
            except OSError:
                shutil.copyfile(path, tmp)
                # The copy must be re-verified: the source could have changed under us.
                self._verify(*hash_file(tmp, algorithm), digest, size)
            self.commit(tmp, digest, size, media_type)
        finally:
            tmp.unlink(missing_ok=True)
        return digest, size

    def commit(self, tmp: Path, digest: str, size: int, media_type: str | None = None) -> None:
        """Rename a verified, fsync'd temp file into place and index it."""
        self.place(tmp, digest)
        self.record(digest, size, media_type)

    def place(self, tmp: Path, digest: str) -> None:
        """Publish a verified file under its digest: fsync, rename, fsync the directory.

        No database access, so callers may run it on a worker thread; they then call
        :meth:`record` on the event loop. The file must be on this filesystem (``tmp/``,
        ``uploads/``) so the rename is atomic.
        """
        final = self.path(digest)
        if not final.exists():
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            # Identical content either way, so a concurrent writer's rename racing ours is harmless.
            os.replace(tmp, final)
            fsync_dir(final.parent)

    def record(self, digest: str, size: int, media_type: str | None) -> None:
        now = time.time()
        with self.db.conn:
            self.db.execute(
                "INSERT INTO blobs (digest, size, media_type, created, last_access) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(digest) DO UPDATE SET last_access = excluded.last_access, "
                "media_type = COALESCE(blobs.media_type, excluded.media_type)",
                [digest, size, media_type, now, now],
            )

    @staticmethod
    def _verify(digest: str, size: int, expected_digest: str | None, expected_size: int | None) -> None:
        if expected_size is not None and size != expected_size:
            raise SizeMismatch(f"content is {size} bytes, expected {expected_size}")
        if expected_digest is not None and digest != expected_digest:
            raise DigestMismatch(f"content digest is {digest}, expected {expected_digest}")


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


def hash_file(path: Path, algorithm: str = "sha256") -> tuple[str, int]:
    """``(digest, size)`` of a file, read in 1 MiB chunks."""
    hasher = new_hasher(algorithm)
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return f"{algorithm}:{hasher.hexdigest()}", size

