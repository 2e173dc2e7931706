"""``upload_sessions``: each OCI upload's repository and acknowledged offset."""

from __future__ import annotations

import time
import uuid

from envcache.store.records import UploadSession
from envcache.store.sqlite.database import Database

_COLUMNS = "id, repository, offset, created, updated"


class SqliteUploads:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, session: UploadSession) -> None:
        async with self._db.writing() as conn:
            conn.execute(f"INSERT INTO upload_sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                         [session.id, session.repository, session.offset, session.created, session.updated])

    async def get(self, session_id: str) -> UploadSession | None:
        try:
            uuid.UUID(session_id)
        except ValueError:
            return None
        row = self._db.one(f"SELECT {_COLUMNS} FROM upload_sessions WHERE id = ?", [session_id])
        return UploadSession(*row) if row else None

    async def set_offset(self, session_id: str, offset: int) -> None:
        async with self._db.writing() as conn:
            conn.execute("UPDATE upload_sessions SET offset = ?, updated = ? WHERE id = ?",
                         [offset, time.time(), session_id])

    async def delete(self, session_id: str) -> bool:
        async with self._db.writing() as conn:
            cursor = conn.execute("DELETE FROM upload_sessions WHERE id = ?", [session_id])
        return cursor.rowcount > 0

    async def all(self) -> list[UploadSession]:
        return [UploadSession(*row) for row in self._db.all(f"SELECT {_COLUMNS} FROM upload_sessions")]

    async def idle(self, since: float) -> list[str]:
        return [row[0] for row in self._db.all("SELECT id FROM upload_sessions WHERE updated < ?", [since])]
