"""The daemon's store: the SQLite index plus blob files (layout in :mod:`envcache.store`)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from envcache.errors import InvalidInput, NotFound
from envcache.store.blobs import BlobStore, DigestMismatch
from envcache.oci import (
    MAX_MANIFEST_SIZE, ManifestInvalid, check_name, check_tag, config_digest, digest_bytes, is_digest, parse_digest,
    parse_manifest,
)
from envcache.store.schema import migrate

class ManifestBlobUnknown(InvalidInput):
    """An image manifest names a config or layer blob that was never pushed."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"manifest references blob {digest} which is not in the registry")
        self.digest = digest


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes
    size: int = 0
    subject: str | None = None


@dataclass(frozen=True)
class UploadSession:
    id: str
    repository: str
    offset: int
    created: float
    updated: float


class Store:
    """Open (creating or migrating) the store under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        for sub in ("blobs", "tmp", "uploads"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self.db = sqlite_utils.Database(self.data_dir / "envcache.db")
        self.db.execute("PRAGMA busy_timeout = 5000")
        self.db.enable_wal()
        # WAL + NORMAL: a commit survives a process crash; blob durability comes from fsync.
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.schema_version = migrate(self.db)
        self.blobs = BlobStore(self.data_dir / "blobs", self.data_dir / "tmp", self.db)
        # Start-up housekeeping deletes temp files and cuts uploads back; only the process that
        # owns the data directory may do that, or a second opener (a CLI command, a test looking
        # at a running daemon's store) would destroy the owner's writes in progress.
        self._lock_fd = os.open(self.data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.owner = True
        except BlockingIOError:
            self.owner = False
        if self.owner:
            self._clean_tmp()
            self._reconcile_uploads()

    def close(self) -> None:
        self.db.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    # -- start-up housekeeping ------------------------------------------------------------
    def _clean_tmp(self) -> None:
        """Temp files are private to one write; any left over are from a crash and worthless."""
        for entry in self.blobs.tmp.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def _reconcile_uploads(self) -> None:
        """Make every upload session resumable from its last acknowledged offset.

        A chunk that was still streaming when the daemon stopped was never acknowledged, so the
        data file is cut back to the recorded offset; files without a row (or rows without a
        file) are dropped. Nothing here ever turns a partial upload into a blob.
        """
        known: set[str] = set()
        for row in list(self.db["upload_sessions"].rows):
            data = self.upload_path(row["id"])
            if not data.is_file():
                self.db["upload_sessions"].delete(row["id"])
                continue
            size = data.stat().st_size
            if size < row["offset"]:
                # Acknowledged bytes were lost (power failure before writeback): unrecoverable.
                self.delete_upload(row["id"])
                continue
            if size > row["offset"]:
                os.truncate(data, row["offset"])
            known.add(row["id"])
        for entry in (self.data_dir / "uploads").iterdir():
            if entry.name not in known:
                entry.unlink(missing_ok=True)

    # -- repositories and blob links -------------------------------------------------------
    def ensure_repository(self, name: str) -> None:
        check_name(name)
        with self.db.conn:
            self.db.execute("INSERT OR IGNORE INTO repositories (name, created) VALUES (?, ?)", [name, time.time()])

    def repository_exists(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM repositories WHERE name = ?", [name]).fetchone() is not None

    def link_blob(self, repository: str, digest: str) -> None:
        """Make a stored blob visible in ``repository``."""
        self.ensure_repository(repository)
        with self.db.conn:
            self.db.execute(
                "INSERT OR IGNORE INTO repository_blobs (repository, digest, created) VALUES (?, ?, ?)",
                [repository, digest, time.time()],
            )

    def blob_linked(self, repository: str, digest: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM repository_blobs WHERE repository = ? AND digest = ?", [repository, digest]
        ).fetchone()
        return row is not None and self.blobs.exists(digest)

    def unlink_blob(self, repository: str, digest: str) -> bool:
        """Remove a blob from a repository (the file stays until GC: others may share it)."""
        with self.db.conn:
            cursor = self.db.execute(
                "DELETE FROM repository_blobs WHERE repository = ? AND digest = ?", [repository, digest]
            )
        return cursor.rowcount > 0

    # -- manifests and tags ------------------------------------------------------------------
    def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        """Store ``body`` byte-for-byte under ``repo``; ``ref`` is a tag (set) or the digest (checked)."""
        check_name(repo)
        if len(body) > MAX_MANIFEST_SIZE:
            raise ManifestInvalid(f"manifest is {len(body)} bytes; the limit is {MAX_MANIFEST_SIZE}")
        if is_digest(ref):
            algorithm = parse_digest(ref)[0]
            digest = digest_bytes(body, algorithm)
            if digest != ref:
                raise DigestMismatch(f"manifest digest is {digest}, but it was pushed as {ref}")
            tag = None
        else:
            tag = check_tag(ref)
            digest = digest_bytes(body)
        info = parse_manifest(body)
        declared = info.doc.get("mediaType")
        if declared is not None and declared != media_type:
            raise ManifestInvalid(f"manifest mediaType {declared!r} does not match Content-Type {media_type!r}")
        blobs = [] if info.is_index else [d.digest for d in info.blobs]
        for blob in blobs:
            if not self.blobs.exists(blob):
                raise ManifestBlobUnknown(blob)
        self.blobs.write_bytes(body, digest, media_type)
        self.ensure_repository(repo)
        now = time.time()
        with self.db.conn:
            self.db.execute(
                "INSERT INTO manifests (repository, digest, media_type, size, subject, artifact_type, "
                "annotations, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(repository, digest) DO UPDATE SET media_type = excluded.media_type",
                [repo, digest, media_type, len(body), info.subject.digest if info.subject else None,
                 info.artifact_type, json.dumps(info.annotations) if info.annotations else None, now],
            )
            for blob in [*blobs, digest]:
                self.db.execute(
                    "INSERT OR IGNORE INTO repository_blobs (repository, digest, created) VALUES (?, ?, ?)",
                    [repo, blob, now],
                )
            if tag is not None:
                self._set_tag(repo, tag, digest, now)
        return digest

    def get_manifest(self, repo: str, ref: str, *, with_body: bool = True) -> Manifest | None:
        """The manifest ``ref`` (tag or digest) names in ``repo``; body read only if asked."""
        if is_digest(ref):
            row = self.db.execute(
                "SELECT digest, media_type, size, subject FROM manifests WHERE repository = ? AND digest = ?",
                [repo, ref],
            ).fetchone()
        else:
            row = self.db.execute(
                "SELECT m.digest, m.media_type, m.size, m.subject FROM tags t JOIN manifests m "
                "ON m.repository = t.repository AND m.digest = t.digest WHERE t.repository = ? AND t.tag = ?",
                [repo, ref],
            ).fetchone()
        if row is None:
            return None
        body = b""
        if with_body:
            try:
                body = self.blobs.path(row[0]).read_bytes()
            except FileNotFoundError:
                return None
        return Manifest(digest=row[0], media_type=row[1], body=body, size=row[2], subject=row[3])

    async def config_digest(self, repository: str, ref: str) -> tuple[str, str] | None:
        """(manifest digest, config digest) of ``repository:ref``, or None.

        The manifest digest is the platform entry :func:`envcache.oci.config_digest` picked when
        ``ref`` names an index, so an image loaded by it is exactly the one whose config digest
        keys the image.
        """
        manifest = self.get_manifest(repository, ref)
        if manifest is None:
            return None
        chosen = manifest.digest

        async def child(digest: str) -> bytes | None:
            nonlocal chosen
            chosen = digest
            found = self.get_manifest(repository, digest)
            return found.body if found else None

        digest = await config_digest(manifest.body, child)
        return (chosen, digest) if digest else None

    def set_tag(self, repo: str, tag: str, digest: str) -> None:
        """Point ``tag`` at a manifest already stored in ``repo``."""
        check_name(repo)
        check_tag(tag)
        if self.get_manifest(repo, digest, with_body=False) is None:
            raise NotFound(f"manifest {digest} is not in repository {repo}")
        with self.db.conn:
            self._set_tag(repo, tag, digest, time.time())

    def _set_tag(self, repo: str, tag: str, digest: str, now: float) -> None:
        self.db.execute(
            "INSERT INTO tags (repository, tag, digest, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(repository, tag) DO UPDATE SET digest = excluded.digest, updated = excluded.updated",
            [repo, tag, digest, now],
        )

    def delete_tag(self, repo: str, tag: str) -> bool:
        with self.db.conn:
            cursor = self.db.execute("DELETE FROM tags WHERE repository = ? AND tag = ?", [repo, tag])
        return cursor.rowcount > 0

    def delete_manifest(self, repo: str, digest: str) -> bool:
        """Remove a manifest and every tag pointing at it from ``repo``."""
        with self.db.conn:
            cursor = self.db.execute("DELETE FROM manifests WHERE repository = ? AND digest = ?", [repo, digest])
            self.db.execute("DELETE FROM tags WHERE repository = ? AND digest = ?", [repo, digest])
            self.db.execute("DELETE FROM repository_blobs WHERE repository = ? AND digest = ?", [repo, digest])
        return cursor.rowcount > 0

    def list_tags(self, repo: str, n: int | None = None, last: str | None = None) -> list[str]:
        """Tags of ``repo`` in order, after ``last``, at most ``n`` (the OCI pagination)."""
        return self._page("SELECT tag FROM tags WHERE repository = ? AND tag > ? ORDER BY tag LIMIT ?",
                          [repo], n, last)

    def list_repositories(self, n: int | None = None, last: str | None = None) -> list[str]:
        """Repository names in order, after ``last``, at most ``n`` (the catalog pagination)."""
        return self._page("SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?", [], n, last)

    def _page(self, sql: str, params: list[Any], n: int | None, last: str | None) -> list[str]:
        # Names and tags are never empty, so '' as ``last`` means "from the start"; LIMIT -1 is
        # SQLite's "no limit". One statement instead of SQL assembled per optional argument.
        rows = self.db.execute(sql, [*params, last or "", -1 if n is None else n])
        return [row[0] for row in rows]

    def referrers(self, repo: str, subject: str, artifact_type: str | None = None) -> list[dict[str, Any]]:
        """Descriptors of the manifests in ``repo`` whose ``subject`` is ``subject``."""
        sql = ("SELECT digest, media_type, size, artifact_type, annotations FROM manifests "
               "WHERE repository = ? AND subject = ?")
        params = [repo, subject]
        if artifact_type is not None:
            sql += " AND artifact_type = ?"
            params.append(artifact_type)
        out = []
        for digest, media_type, size, a_type, notes in self.db.execute(sql + " ORDER BY created", params):
            descriptor: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
            if a_type:
                descriptor["artifactType"] = a_type
            if notes:
                descriptor["annotations"] = json.loads(notes)
            out.append(descriptor)
        return out

    # -- upload sessions ---------------------------------------------------------------------
    def upload_path(self, session_id: str) -> Path:
        return self.data_dir / "uploads" / session_id

    def create_upload(self, repo: str) -> UploadSession:
        self.ensure_repository(repo)
        now = time.time()
        session = UploadSession(id=str(uuid.uuid4()), repository=repo, offset=0, created=now, updated=now)
        self.upload_path(session.id).touch()
        with self.db.conn:
            self.db["upload_sessions"].insert(session.__dict__)
        return session

    def get_upload(self, session_id: str) -> UploadSession | None:
        try:
            uuid.UUID(session_id)
        except ValueError:
            return None
        row = self.db.execute(
            "SELECT id, repository, offset, created, updated FROM upload_sessions WHERE id = ?", [session_id]
        ).fetchone()
        return UploadSession(*row) if row else None

    def set_upload_offset(self, session_id: str, offset: int) -> None:
        with self.db.conn:
            self.db.execute(
                "UPDATE upload_sessions SET offset = ?, updated = ? WHERE id = ?", [offset, time.time(), session_id]
            )

    def delete_upload(self, session_id: str) -> bool:
        self.upload_path(session_id).unlink(missing_ok=True)
        with self.db.conn:
            cursor = self.db.execute("DELETE FROM upload_sessions WHERE id = ?", [session_id])
        return cursor.rowcount > 0

    def idle_uploads(self, ttl: float) -> list[str]:
        """Ids of sessions idle for more than ``ttl`` seconds (the registry expires them)."""
        cutoff = time.time() - ttl
        return [row[0] for row in self.db.execute("SELECT id FROM upload_sessions WHERE updated < ?", [cutoff])]
