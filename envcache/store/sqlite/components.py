"""Tables that serve one part of the daemon each: the build's layer map, the base-digest cache,
the upstream push log and the activity counters."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from envcache.store.records import KnownLayer
from envcache.store.sqlite.database import Database
from envcache.store.sqlite.schema import ACTIVITY, BASE_DIGESTS, LAYER_BLOBS, UPSTREAM_PUSHES

_PUSH = ("id, upstream, repository, tag, remote_repository, digest, state, attempts, error, bytes, mounted, "
         "created, updated")


class SqliteLayerMap:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def find(self, diff_id: str, compression: str) -> KnownLayer | None:
        row = self._db.one(f"SELECT diff_id, compression, blob_digest, size FROM {LAYER_BLOBS} "
                           "WHERE diff_id = ? AND compression = ?", [diff_id, compression])
        return KnownLayer(*row) if row else None

    async def put(self, layer: KnownLayer) -> None:
        async with self._db.writing() as conn:
            conn.execute(f"INSERT OR REPLACE INTO {LAYER_BLOBS} (diff_id, compression, blob_digest, size, created) "
                         "VALUES (?, ?, ?, ?, ?)",
                         [layer.diff_id, layer.compression, layer.blob_digest, layer.size, time.time()])

    async def blob_digests(self) -> list[str]:
        return [row[0] for row in self._db.all(f"SELECT blob_digest FROM {LAYER_BLOBS}")]

    async def forget_blobs(self, digests: Sequence[str]) -> None:
        async with self._db.writing() as conn:
            conn.executemany(f"DELETE FROM {LAYER_BLOBS} WHERE blob_digest = ?", [(d,) for d in digests])


class SqliteBaseDigests:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, reference: str) -> str | None:
        row = self._db.one(f"SELECT digest FROM {BASE_DIGESTS} WHERE reference = ?", [reference])
        return row[0] if row else None

    async def put(self, reference: str, digest: str, resolved: float) -> None:
        async with self._db.writing() as conn:
            conn.execute(f"INSERT OR REPLACE INTO {BASE_DIGESTS} (reference, digest, resolved) VALUES (?, ?, ?)",
                         [reference, digest, resolved])


class SqlitePushLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, rows: Sequence[dict[str, Any]]) -> None:
        columns = _PUSH.split(", ")
        async with self._db.writing() as conn:
            conn.executemany(f"INSERT INTO {UPSTREAM_PUSHES} ({_PUSH}) VALUES ({', '.join('?' * len(columns))})",
                             [[row.get(c) for c in columns] for row in rows])

    async def update(self, push_id: str, **values: Any) -> None:
        values["updated"] = time.time()
        assignments = ", ".join(f"{column} = ?" for column in values)
        async with self._db.writing() as conn:
            conn.execute(f"UPDATE {UPSTREAM_PUSHES} SET {assignments} WHERE id = ?", [*values.values(), push_id])

    async def unfinished(self) -> list[dict[str, Any]]:
        return self._db.dicts(f"SELECT id, upstream, repository, tag FROM {UPSTREAM_PUSHES} "
                              "WHERE state IN ('queued', 'running', 'retrying')")

    async def by_ids(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(ids))
        return self._db.dicts(f"SELECT {_PUSH} FROM {UPSTREAM_PUSHES} WHERE id IN ({marks})", list(ids))

    async def counts(self) -> dict[str, int]:
        return {state: n for state, n in self._db.all(f"SELECT state, count(*) FROM {UPSTREAM_PUSHES} GROUP BY state")}

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        return self._db.dicts(f"SELECT {_PUSH} FROM {UPSTREAM_PUSHES} ORDER BY updated DESC LIMIT ?", [limit])

    async def for_tag(self, repository: str, tag: str) -> list[dict[str, Any]]:
        return self._db.dicts(f"SELECT {_PUSH} FROM {UPSTREAM_PUSHES} WHERE repository = ? AND tag = ? "
                              "ORDER BY created DESC", [repository, tag])


class SqliteActivity:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, counts: Mapping[tuple[int, str, int], int]) -> None:
        async with self._db.writing() as conn:
            conn.executemany(f"INSERT INTO {ACTIVITY} (resolution, name, bucket, count) VALUES (?, ?, ?, ?) "
                             "ON CONFLICT (resolution, name, bucket) DO UPDATE SET count = count + excluded.count",
                             [(*key, n) for key, n in counts.items()])

    async def series(self, resolution: int, since: int, step: int) -> list[tuple[str, int, int]]:
        return [(name, start, n) for name, start, n in self._db.all(
            f"SELECT name, (bucket / ?) * ? AS start, sum(count) FROM {ACTIVITY} "
            "WHERE resolution = ? AND bucket >= ? GROUP BY name, start ORDER BY start",
            [step, step, resolution, since])]

    async def prune(self, resolution: int, before: int) -> int:
        async with self._db.writing() as conn:
            return conn.execute(f"DELETE FROM {ACTIVITY} WHERE resolution = ? AND bucket < ?",
                                [resolution, before]).rowcount
