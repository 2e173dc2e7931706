"""The daemon's own tables: the image index, builds, registered environments and private wheels."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import astuple
from typing import Any

from envcache.errors import Conflict
from envcache.store.records import (
    BuildRecord, EnvironmentVersion, ReplacedImage, StepResult, StoredImage, WheelRecord,
)
from envcache.store.sqlite.database import Database

_IMAGE = ("key, variant, spec_hash, canonical, repository, tag, manifest_digest, size, created, last_used, lock, "
          "base_digest, recipe_version, compression, pinned")
_HISTORY = "key, variant, repository, tag, manifest_digest, size, created, replaced, lock"
# What re-filing an image replaces: everything but its key and its pin (a rebuild stays pinned).
_IMAGE_FILED = _IMAGE.split(", ")[1:-1]
#: An image's last use in SQL (a row never used since it was filed: its creation).
_IMAGE_USED = "COALESCE(last_used, created, 0)"
_BUILD = "id, key, variant, spec_hash, env_name, env_version, state, created, started, finished, error, log"
# A listing's columns: the log stays behind (it is read one build at a time).
_BUILD_LISTED = _BUILD.replace(", log", ", NULL")
_ENVIRONMENT = "name, version, spec_hash, definition, created"
_WHEEL = "digest, filename, name, version, tags, requires_python, summary, size, created"


def _image(row: tuple[Any, ...]) -> StoredImage:
    (key, variant, spec_hash, canonical, repository, tag, digest, size, created, last_used, lock, base_digest,
     recipe_version, compression, pinned) = row
    return StoredImage(key, variant, spec_hash, bytes(canonical) if canonical is not None else None, repository,
                       tag, digest, size or 0, created, last_used or created, json.loads(lock) if lock else {},
                       base_digest or "", str(recipe_version or ""), compression or "", bool(pinned))


def _file(conn: sqlite3.Connection, image: StoredImage) -> None:
    """File ``image`` under its key, keeping the key's pin (a rebuild or refresh stays pinned)."""
    values = list(astuple(image))
    values[10] = json.dumps(image.lock, sort_keys=True)
    values[-1] = int(image.pinned)
    updates = ", ".join(f"{column} = excluded.{column}" for column in _IMAGE_FILED)
    conn.execute(f"INSERT INTO images ({_IMAGE}) VALUES ({', '.join('?' * len(values))}) "
                 f"ON CONFLICT(key) DO UPDATE SET {updates}", values)


def _environment(row: tuple[Any, ...]) -> EnvironmentVersion:
    return EnvironmentVersion(row[0], row[1], row[2], json.loads(row[3]), row[4])


def _wheel(row: tuple[Any, ...]) -> WheelRecord:
    digest, filename, name, version, tags, requires_python, summary, size, created = row
    return WheelRecord(digest, filename, name, version, tuple(json.loads(tags)), requires_python, summary, size,
                       created)


class SqliteImages:
    """``images``: one row per image key."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str) -> StoredImage | None:
        row = self._db.one(f"SELECT {_IMAGE} FROM images WHERE key = ?", [key])
        return _image(row) if row else None

    async def put(self, image: StoredImage) -> None:
        async with self._db.writing() as conn:
            _file(conn, image)

    async def set_pinned(self, key: str, pinned: bool) -> StoredImage | None:
        async with self._db.writing() as conn:
            conn.execute("UPDATE images SET pinned = ? WHERE key = ?", [int(pinned), key])
        return await self.get(key)

    async def evictable(self, before: float) -> list[StoredImage]:
        return [_image(row) for row in self._db.all(
            f"SELECT {_IMAGE} FROM images WHERE pinned = 0 AND {_IMAGE_USED} < ? ORDER BY {_IMAGE_USED}, key",
            [before])]

    async def recent(self, limit: int) -> list[StoredImage]:
        return [_image(row) for row in self._db.all(f"SELECT {_IMAGE} FROM images ORDER BY last_used DESC LIMIT ?",
                                                    [limit])]

    async def tag_of(self, key: str) -> str | None:
        row = self._db.one("SELECT tag FROM images WHERE key = ?", [key])
        return row[0] if row else None

    async def touch(self, used: dict[str, float]) -> None:
        async with self._db.writing() as conn:
            conn.executemany("UPDATE images SET last_used = ? WHERE key = ?", [(t, k) for k, t in used.items()])

    async def roots_for_gc(self) -> list[tuple[str, str, str]]:
        return [(k, r, d) for k, r, d in self._db.all("SELECT key, repository, manifest_digest FROM images")]

    async def unused_since(self, limit: float) -> list[tuple[str, str, str]]:
        return [(k, r, d) for k, r, d in self._db.all(
            f"SELECT key, repository, manifest_digest FROM images WHERE pinned = 0 AND {_IMAGE_USED} < ?", [limit])]

    async def all_tags(self) -> list[tuple[str, str, str, str]]:
        return [tuple(row) for row in self._db.all("SELECT key, repository, tag, manifest_digest FROM images")]

    async def delete(self, keys: Sequence[str]) -> None:
        async with self._db.writing() as conn:
            conn.executemany("DELETE FROM images WHERE key = ?", [(k,) for k in keys])

    async def replace(self, image: StoredImage, previous: StoredImage, now: float) -> None:
        async with self._db.writing() as conn:  # one transaction: the key never names nothing
            conn.execute(f"INSERT OR REPLACE INTO image_history ({_HISTORY}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [previous.key, previous.variant, previous.repository, previous.tag,
                          previous.manifest_digest, previous.size, previous.created, now,
                          json.dumps(previous.lock, sort_keys=True)])
            _file(conn, image)

    async def history(self, key: str) -> list[ReplacedImage]:
        rows = self._db.all(f"SELECT {_HISTORY} FROM image_history WHERE key = ? ORDER BY replaced DESC", [key])
        return [ReplacedImage(*row[:8], json.loads(row[8]) if row[8] else {}) for row in rows]

    async def kept_history(self, replaced_since: float) -> list[tuple[str, str]]:
        return [(r, d) for r, d in self._db.all(
            "SELECT repository, manifest_digest FROM image_history WHERE replaced >= ?", [replaced_since])]

    async def forget_history(self, replaced_before: float) -> int:
        async with self._db.writing() as conn:
            return conn.execute("DELETE FROM image_history WHERE replaced < ?", [replaced_before]).rowcount

    async def delete_unused(self, keys: Sequence[str], limit: float) -> list[str]:
        async with self._db.writing() as conn:
            return [key for key in keys if conn.execute(
                f"DELETE FROM images WHERE key = ? AND pinned = 0 AND {_IMAGE_USED} < ?", [key, limit]).rowcount]

    async def page(self, limit: int, after: tuple[float, str] | None = None) -> list[StoredImage]:
        where, params = ("", []) if after is None else ("WHERE (last_used < ? OR (last_used = ? AND key < ?)) ",
                                                        [after[0], after[0], after[1]])
        return [_image(row) for row in self._db.all(
            f"SELECT {_IMAGE} FROM images {where}ORDER BY last_used DESC, key DESC LIMIT ?", [*params, limit])]

    async def totals(self) -> tuple[int, int]:
        count, size = self._db.one("SELECT count(*), COALESCE(sum(size), 0) FROM images") or (0, 0)
        return count, size

    async def by_spec_hashes(self, spec_hashes: Sequence[str]) -> list[StoredImage]:
        if not spec_hashes:
            return []
        marks = ", ".join("?" * len(spec_hashes))
        return [_image(row) for row in self._db.all(
            f"SELECT {_IMAGE} FROM images WHERE spec_hash IN ({marks}) ORDER BY last_used DESC", list(spec_hashes))]

    async def mentioning(self, text: str) -> list[StoredImage]:
        return [_image(row) for row in self._db.all(f"SELECT {_IMAGE} FROM images WHERE instr(canonical, ?) > 0",
                                                    [text.encode()])]


class SqliteBuilds:
    """``builds``: state while running, state and log once finished."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def save(self, build: BuildRecord) -> None:
        async with self._db.writing() as conn:
            conn.execute(f"INSERT OR REPLACE INTO builds ({_BUILD}) VALUES ({', '.join('?' * 12)})", astuple(build))

    async def get(self, build_id: str) -> BuildRecord | None:
        row = self._db.one(f"SELECT {_BUILD} FROM builds WHERE id = ?", [build_id])
        return BuildRecord(*row) if row else None

    async def fail_interrupted(self, reason: str) -> int:
        async with self._db.writing() as conn:
            cursor = conn.execute("UPDATE builds SET state = 'failed', error = ?, finished = ? "
                                  "WHERE state IN ('queued', 'running')", [reason, time.time()])
        return cursor.rowcount

    async def page(self, limit: int, *, state: str | None = None, key: str | None = None,
                   before: tuple[float, str] | None = None) -> list[BuildRecord]:
        clauses, params = [], []
        for column, value in (("state", state), ("key", key)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            clauses.append("(created < ? OR (created = ? AND id < ?))")
            params += [before[0], before[0], before[1]]
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        return [BuildRecord(*row) for row in self._db.all(
            f"SELECT {_BUILD_LISTED} FROM builds {where}ORDER BY created DESC, id DESC LIMIT ?", [*params, limit])]

    async def counts(self) -> dict[str, int]:
        return {state: n for state, n in self._db.all("SELECT state, count(*) FROM builds GROUP BY state")}

    async def slowest(self, limit: int, since: float) -> list[BuildRecord]:
        return [BuildRecord(*row) for row in self._db.all(
            f"SELECT {_BUILD_LISTED} FROM builds WHERE created >= ? AND state = 'succeeded' "
            "AND started IS NOT NULL AND finished IS NOT NULL ORDER BY finished - started DESC LIMIT ?",
            [since, limit])]


class SqliteEnvironments:
    """``environments``: (name, version) → content."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def register(self, name: str, spec_hash: str, definition: dict[str, Any],
                       now: float) -> tuple[EnvironmentVersion, bool]:
        async with self._db.writing() as conn:  # one transaction: two registrations cannot both take N+1
            latest = conn.execute(f"SELECT {_ENVIRONMENT} FROM environments WHERE name = ? "
                                  "ORDER BY version DESC LIMIT 1", [name]).fetchone()
            if latest is not None and latest[2] == spec_hash:
                return _environment(latest), False
            version = 1 if latest is None else latest[1] + 1
            body = dict(definition, name=name, version=str(version))  # the labels follow the registry
            conn.execute(f"INSERT INTO environments ({_ENVIRONMENT}) VALUES (?, ?, ?, ?, ?)",
                         [name, version, spec_hash, json.dumps(body, sort_keys=True), now])
        return EnvironmentVersion(name, version, spec_hash, body, now), True

    async def get(self, name: str, version: int | None = None) -> EnvironmentVersion | None:
        if version is None:
            row = self._db.one(f"SELECT {_ENVIRONMENT} FROM environments WHERE name = ? "
                               "ORDER BY version DESC LIMIT 1", [name])
        else:
            row = self._db.one(f"SELECT {_ENVIRONMENT} FROM environments WHERE name = ? AND version = ?",
                               [name, version])
        return _environment(row) if row else None

    async def versions(self, name: str) -> list[EnvironmentVersion]:
        return [_environment(row) for row in
                self._db.all(f"SELECT {_ENVIRONMENT} FROM environments WHERE name = ? ORDER BY version", [name])]

    async def latest(self) -> list[EnvironmentVersion]:
        return [_environment(row) for row in self._db.all(
            "SELECT e.name, e.version, e.spec_hash, e.definition, e.created FROM environments e "
            "JOIN (SELECT name, max(version) v FROM environments GROUP BY name) m ON e.name = m.name AND e.version = m.v "
            "ORDER BY e.name")]

    async def page(self, limit: int, *, after: str | None = None, before: str | None = None,
                   contains: str = "") -> list[EnvironmentVersion]:
        clauses, params = ["e.version = (SELECT max(version) FROM environments WHERE name = e.name)"], []
        if contains:
            clauses.append("e.name LIKE ? ESCAPE '\\'")
            params.append(f"%{_like(contains)}%")
        if after is not None:
            clauses.append("e.name > ?")
            params.append(after)
        if before is not None:
            clauses.append("e.name < ?")
            params.append(before)
        order = "DESC" if before is not None and after is None else "ASC"
        rows = self._db.all(f"SELECT {_ENVIRONMENT} FROM environments e WHERE {' AND '.join(clauses)} "
                            f"ORDER BY e.name {order} LIMIT ?", [*params, limit])
        return sorted((_environment(row) for row in rows), key=lambda version: version.name)

    async def count(self, contains: str = "") -> int:
        if not contains:
            return self._db.one("SELECT count(DISTINCT name) FROM environments")[0]
        return self._db.one("SELECT count(DISTINCT name) FROM environments WHERE name LIKE ? ESCAPE '\\'",
                            [f"%{_like(contains)}%"])[0]

    async def mentioning(self, text: str) -> list[EnvironmentVersion]:
        return [_environment(row) for row in self._db.all(
            f"SELECT {_ENVIRONMENT} FROM environments WHERE instr(definition, ?) > 0 ORDER BY name, version", [text])]


def _like(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern (``%`` and ``_`` are wildcards there)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class SqliteWheels:
    """``wheels``: digest → the wheel's file name and metadata; file names are unique."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, wheel: WheelRecord) -> tuple[WheelRecord, bool]:
        async with self._db.writing() as conn:  # one transaction: the same file name cannot be taken twice
            row = conn.execute(f"SELECT {_WHEEL} FROM wheels WHERE digest = ? OR filename = ?",
                               [wheel.digest, wheel.filename]).fetchone()
            if row is not None:
                found = _wheel(row)
                if found.digest != wheel.digest:
                    raise Conflict(f"another wheel named {wheel.filename} is already uploaded ({found.digest}); "
                                   "a wheel file name names one file only: build it with a new version")
                return found, False
            values = [*astuple(wheel)]
            values[4] = json.dumps(list(wheel.tags))
            conn.execute(f"INSERT INTO wheels ({_WHEEL}) VALUES ({', '.join('?' * len(values))})", values)
        return wheel, True

    async def get(self, digest: str) -> WheelRecord | None:
        row = self._db.one(f"SELECT {_WHEEL} FROM wheels WHERE digest = ?", [digest])
        return _wheel(row) if row else None

    async def named(self, filename: str) -> WheelRecord | None:
        row = self._db.one(f"SELECT {_WHEEL} FROM wheels WHERE filename = ?", [filename])
        return _wheel(row) if row else None

    async def all(self) -> list[WheelRecord]:
        return [_wheel(row) for row in self._db.all(f"SELECT {_WHEEL} FROM wheels ORDER BY name, filename")]

    async def project(self, name: str) -> list[WheelRecord]:
        return [_wheel(row) for row in
                self._db.all(f"SELECT {_WHEEL} FROM wheels WHERE name = ? ORDER BY filename", [name])]

    async def delete(self, digest: str) -> bool:
        async with self._db.writing() as conn:
            return conn.execute("DELETE FROM wheels WHERE digest = ?", [digest]).rowcount > 0


class SqliteStepResults:
    """``step_results``: one row per pipeline step key."""

    _COLUMNS = "key, step, manifest_digest, outputs, created, last_used"

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str) -> StepResult | None:
        row = self._db.one(f"SELECT {self._COLUMNS} FROM step_results WHERE key = ?", [key])
        if row is None:
            return None
        outputs = {name: (tree, blob) for name, (tree, blob) in json.loads(row[3]).items()}
        return StepResult(row[0], row[1], row[2], outputs, row[4], row[5])

    async def put(self, result: StepResult) -> None:
        values = [result.key, result.step, result.manifest_digest, json.dumps(result.outputs, sort_keys=True),
                  result.created, result.last_used]
        async with self._db.writing() as conn:
            conn.execute(f"INSERT OR REPLACE INTO step_results ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", values)

    async def touch(self, used: dict[str, float]) -> None:
        async with self._db.writing() as conn:
            conn.executemany("UPDATE step_results SET last_used = ? WHERE key = ?", [(t, k) for k, t in used.items()])

    async def unused_since(self, limit: float) -> list[tuple[str, str]]:
        return [(k, d) for k, d in self._db.all("SELECT key, manifest_digest FROM step_results WHERE last_used < ?",
                                                [limit])]

    async def delete_unused(self, keys: Sequence[str], limit: float) -> list[str]:
        async with self._db.writing() as conn:
            return [key for key in keys if conn.execute(
                "DELETE FROM step_results WHERE key = ? AND last_used < ?", [key, limit]).rowcount]
