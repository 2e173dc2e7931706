"""The registry's tables: blobs and their repository links, manifests, tags and repositories."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from envcache.oci import is_digest
from envcache.store.records import BlobRow, ManifestRow
from envcache.store.sqlite.database import Database

#: Digests per statement when a list is matched with ``IN (...)`` (SQLite's variable limit is far above).
_BATCH = 500
#: A blob's use time in SQL: its last use or read, its creation for a row never touched since.
_USED = "MAX(COALESCE(created, 0), COALESCE(last_access, 0))"


def _batches(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i:i + _BATCH] for i in range(0, len(items), _BATCH)]


class SqliteBlobIndex:
    """``blobs`` (size, media type, times, generation) and ``repository_blobs`` (which repository
    may serve which blob).

    A use — upload finish, re-push, mount, a manifest naming the blob — is an ``UPDATE`` that
    bumps ``gen`` in the caller's transaction; gc's ``DELETE`` names the generation it marked.
    Reads only note their time in memory (``_reads``); :meth:`flush_reads` writes them in one
    statement, so a GET never writes and never fails because the disk is full.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._reads: dict[str, float] = {}

    async def record(self, digest: str, size: int, media_type: str | None) -> None:
        now = time.time()
        async with self._db.writing() as conn:
            conn.execute(
                "INSERT INTO blobs (digest, size, media_type, created, last_access, gen) VALUES (?, ?, ?, ?, ?, 0) "
                "ON CONFLICT(digest) DO UPDATE SET last_access = excluded.last_access, gen = blobs.gen + 1, "
                "media_type = COALESCE(blobs.media_type, excluded.media_type)",
                [digest, size, media_type, now, now],
            )

    async def use(self, digests: Sequence[str]) -> list[str]:
        now = time.time()
        missing = []
        async with self._db.writing() as conn:
            for digest in digests:
                if not conn.execute("UPDATE blobs SET last_access = ?, gen = gen + 1 WHERE digest = ?",
                                    [now, digest]).rowcount:
                    missing.append(digest)
        return missing

    async def touch(self, digest: str) -> None:
        self._reads[digest] = time.time()

    async def flush_reads(self) -> None:
        reads, self._reads = self._reads, {}
        if not reads:
            return
        try:
            async with self._db.writing() as conn:
                conn.executemany(f"UPDATE blobs SET last_access = MAX({_USED}, ?) WHERE digest = ?",
                                 [(at, digest) for digest, at in reads.items()])
        except BaseException:
            for digest, at in reads.items():  # kept for the next flush
                self._reads[digest] = max(at, self._reads.get(digest, 0.0))
            raise

    async def get(self, digest: str) -> BlobRow | None:
        row = self._db.one("SELECT digest, size, media_type, created, last_access, gen FROM blobs WHERE digest = ?",
                           [digest])
        return BlobRow(*row) if row else None

    async def all(self) -> list[BlobRow]:
        return [BlobRow(d, s, m, c or 0.0, a or 0.0, g) for d, s, m, c, a, g in
                self._db.all("SELECT digest, size, media_type, created, last_access, gen FROM blobs")]

    async def known(self, digests: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for batch in _batches(digests):
            found.update(row[0] for row in self._db.all(
                f"SELECT digest FROM blobs WHERE digest IN ({','.join('?' * len(batch))})", batch))
        return found

    async def link(self, repository: str, digests: Sequence[str]) -> None:
        now = time.time()
        async with self._db.writing() as conn:
            conn.execute("INSERT OR IGNORE INTO repositories (name, created) VALUES (?, ?)", [repository, now])
            conn.executemany("INSERT INTO repository_blobs (repository, digest, created) VALUES (?, ?, ?) "
                             "ON CONFLICT(repository, digest) DO UPDATE SET created = excluded.created",
                             [(repository, digest, now) for digest in digests])
            conn.executemany("UPDATE blobs SET last_access = ?, gen = gen + 1 WHERE digest = ?",
                             [(now, digest) for digest in digests])

    async def linked(self, repository: str, digest: str) -> bool:
        return self._db.one("SELECT 1 FROM repository_blobs WHERE repository = ? AND digest = ?",
                            [repository, digest]) is not None

    async def unlink(self, repository: str, digest: str) -> bool:
        async with self._db.writing() as conn:
            cursor = conn.execute("DELETE FROM repository_blobs WHERE repository = ? AND digest = ?",
                                  [repository, digest])
        return cursor.rowcount > 0

    async def links(self) -> list[tuple[str, str, float]]:
        return [(r, d, c or 0.0) for r, d, c in self._db.all("SELECT repository, digest, created FROM repository_blobs")]

    async def forget(self, digests: Sequence[str]) -> None:
        async with self._db.writing() as conn:
            conn.executemany("DELETE FROM blobs WHERE digest = ?", [(d,) for d in digests])
            conn.executemany("DELETE FROM repository_blobs WHERE digest = ?", [(d,) for d in digests])

    async def forget_unused(self, marked: Sequence[tuple[str, int]], cutoff: float) -> list[str]:
        gone = []
        async with self._db.writing() as conn:
            for digest, gen in marked:
                if self._reads.get(digest, 0.0) >= cutoff:
                    continue  # read since the cutoff, not flushed yet: a read counts too
                if conn.execute(f"DELETE FROM blobs WHERE digest = ? AND gen = ? AND {_USED} < ?",
                                [digest, gen, cutoff]).rowcount:
                    gone.append(digest)
            conn.executemany("DELETE FROM repository_blobs WHERE digest = ?", [(d,) for d in gone])
        return gone

    async def unlink_unused(self, links: Sequence[tuple[str, str, float]], cutoff: float) -> int:
        async with self._db.writing() as conn:
            return sum(conn.execute(
                "DELETE FROM repository_blobs WHERE repository = ? AND digest = ? AND created = ? AND NOT EXISTS "
                f"(SELECT 1 FROM blobs WHERE digest = repository_blobs.digest AND {_USED} >= ?)",
                [*link, cutoff]).rowcount for link in links if self._reads.get(link[1], 0.0) < cutoff)

    async def set_size(self, digest: str, size: int) -> None:
        async with self._db.writing() as conn:
            conn.execute("UPDATE blobs SET size = ? WHERE digest = ?", [size, digest])

    async def restore(self, digest: str, size: int, media_type: str | None, created: float) -> None:
        async with self._db.writing() as conn:
            conn.execute("INSERT INTO blobs (digest, size, media_type, created, last_access) VALUES (?, ?, ?, ?, ?)",
                         [digest, size, media_type, created, time.time()])


_MANIFEST = ("m.repository, m.digest, m.media_type, m.size, m.subject, COALESCE(m.created, 0), m.gen, "
             "COALESCE(m.last_used, m.created, 0)")


class SqliteManifests:
    """``manifests`` (with subject, artifact type and annotations for the referrers API),
    ``tags`` and ``repositories``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, repository: str, digest: str, *, media_type: str, size: int, subject: str | None,
                  artifact_type: str | None, annotations: str | None, tag: str | None) -> None:
        now = time.time()
        async with self._db.writing() as conn:
            conn.execute("INSERT OR IGNORE INTO repositories (name, created) VALUES (?, ?)", [repository, now])
            conn.execute(
                "INSERT INTO manifests (repository, digest, media_type, size, subject, artifact_type, "
                "annotations, created, last_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(repository, digest) DO UPDATE SET media_type = excluded.media_type, "
                "last_used = excluded.last_used, gen = manifests.gen + 1",
                [repository, digest, media_type, size, subject, artifact_type, annotations, now, now],
            )
            if tag is not None:
                self._set_tag(conn, repository, tag, digest, now)

    async def find(self, repository: str, reference: str) -> ManifestRow | None:
        if is_digest(reference):
            row = self._db.one(f"SELECT {_MANIFEST} FROM manifests m WHERE repository = ? AND digest = ?",
                               [repository, reference])
        else:
            row = self._db.one(
                f"SELECT {_MANIFEST} FROM tags t JOIN manifests m ON m.repository = t.repository "
                "AND m.digest = t.digest WHERE t.repository = ? AND t.tag = ?", [repository, reference])
        return ManifestRow(*row) if row else None

    async def use(self, repository: str, digests: Sequence[str]) -> None:
        async with self._db.writing() as conn:
            conn.executemany("UPDATE manifests SET gen = gen + 1, last_used = ? WHERE repository = ? AND digest = ?",
                             [(time.time(), repository, digest) for digest in digests])

    async def set_tag(self, repository: str, tag: str, digest: str) -> None:
        async with self._db.writing() as conn:
            self._set_tag(conn, repository, tag, digest, time.time())

    @staticmethod
    def _set_tag(conn: Any, repository: str, tag: str, digest: str, now: float) -> None:
        """Move the tag, and count it as a use of the manifest it now names."""
        conn.execute(
            "INSERT INTO tags (repository, tag, digest, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(repository, tag) DO UPDATE SET digest = excluded.digest, updated = excluded.updated",
            [repository, tag, digest, now],
        )
        conn.execute("UPDATE manifests SET gen = gen + 1, last_used = ? WHERE repository = ? AND digest = ?",
                     [now, repository, digest])

    async def delete_tag(self, repository: str, tag: str) -> bool:
        async with self._db.writing() as conn:
            cursor = conn.execute("DELETE FROM tags WHERE repository = ? AND tag = ?", [repository, tag])
        return cursor.rowcount > 0

    async def delete(self, repository: str, digest: str) -> bool:
        async with self._db.writing() as conn:
            cursor = conn.execute("DELETE FROM manifests WHERE repository = ? AND digest = ?", [repository, digest])
            conn.execute("DELETE FROM tags WHERE repository = ? AND digest = ?", [repository, digest])
            conn.execute("DELETE FROM repository_blobs WHERE repository = ? AND digest = ?", [repository, digest])
        return cursor.rowcount > 0

    async def tags(self, repository: str, n: int | None = None, last: str | None = None) -> list[str]:
        return self._page("SELECT tag FROM tags WHERE repository = ? AND tag > ? ORDER BY tag LIMIT ?",
                          [repository], n, last)

    async def tagged(self, repository: str) -> list[tuple[str, str]]:
        return [(t, d) for t, d in self._db.all("SELECT tag, digest FROM tags WHERE repository = ?", [repository])]

    async def repositories(self, n: int | None = None, last: str | None = None) -> list[str]:
        return self._page("SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?", [], n, last)

    def _page(self, sql: str, params: list[Any], n: int | None, last: str | None) -> list[str]:
        # Names and tags are never empty, so '' as ``last`` means "from the start"; LIMIT -1 is
        # SQLite's "no limit". One statement instead of SQL assembled per optional argument.
        return [row[0] for row in self._db.all(sql, [*params, last or "", -1 if n is None else n])]

    async def ensure_repository(self, name: str) -> None:
        async with self._db.writing() as conn:
            conn.execute("INSERT OR IGNORE INTO repositories (name, created) VALUES (?, ?)", [name, time.time()])

    async def repository_exists(self, name: str) -> bool:
        return self._db.one("SELECT 1 FROM repositories WHERE name = ?", [name]) is not None

    async def referrers(self, repository: str, subject: str, artifact_type: str | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT digest, media_type, size, artifact_type, annotations FROM manifests "
               "WHERE repository = ? AND subject = ?")
        params = [repository, subject]
        if artifact_type is not None:
            sql += " AND artifact_type = ?"
            params.append(artifact_type)
        out = []
        for digest, media_type, size, a_type, notes in self._db.all(sql + " ORDER BY created", params):
            descriptor: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
            if a_type:
                descriptor["artifactType"] = a_type
            if notes:
                descriptor["annotations"] = json.loads(notes)
            out.append(descriptor)
        return out

    async def all(self, repository: str | None = None) -> list[ManifestRow]:
        if repository is None:
            return [ManifestRow(*row) for row in self._db.all(f"SELECT {_MANIFEST} FROM manifests m")]
        return [ManifestRow(*row) for row in
                self._db.all(f"SELECT {_MANIFEST} FROM manifests m WHERE repository = ?", [repository])]

    async def roots_for_gc(self) -> list[tuple[str, str, str]]:
        return [(r, t, d) for r, t, d in self._db.all("SELECT repository, tag, digest FROM tags")]

    async def delete_tags(self, tags: Sequence[tuple[str, str, str]]) -> None:
        async with self._db.writing() as conn:
            conn.executemany("DELETE FROM tags WHERE repository = ? AND tag = ? AND digest = ?", tags)

    async def delete_many(self, refs: Sequence[tuple[str, str]]) -> None:
        async with self._db.writing() as conn:
            conn.executemany("DELETE FROM manifests WHERE repository = ? AND digest = ?", refs)
            conn.executemany("DELETE FROM tags WHERE repository = ? AND digest = ?", refs)

    async def delete_unused(self, marked: Sequence[tuple[str, str, int]], cutoff: float) -> list[tuple[str, str]]:
        gone = []
        async with self._db.writing() as conn:
            for repository, digest, gen in marked:
                if conn.execute(
                        "DELETE FROM manifests WHERE repository = ? AND digest = ? AND gen = ? "
                        "AND COALESCE(last_used, created, 0) < ? AND NOT EXISTS "
                        "(SELECT 1 FROM tags t WHERE t.repository = manifests.repository AND t.digest = manifests.digest)",
                        [repository, digest, gen, cutoff]).rowcount:
                    gone.append((repository, digest))
        return gone

    async def drop_empty_repositories(self, older_than: float) -> int:
        async with self._db.writing() as conn:
            cursor = conn.execute(
                "DELETE FROM repositories WHERE created < ? "
                "AND name NOT IN (SELECT repository FROM manifests) AND name NOT IN (SELECT repository FROM tags) "
                "AND name NOT IN (SELECT repository FROM repository_blobs) "
                "AND name NOT IN (SELECT repository FROM upload_sessions)", [older_than])
        return cursor.rowcount
