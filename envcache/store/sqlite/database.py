"""One SQLite database file: its connection, its transactions and its migrations.

Datasette's ``Database`` is the model: every repository goes through this one object, which
owns the connection (WAL mode, a busy timeout), applies the schema's migrations on open and is
the only place that begins and commits transactions. Statements are fast indexed lookups and
small writes, so they run directly on the event loop's thread inside the repositories' async
methods — no thread hop on the hit path.

Transactions: a repository method that writes is atomic on its own. Several calls become one
unit inside ``async with database.transaction()``: the calls made by the task that opened it
join it, and every other task's write waits until it commits (an asyncio lock, since all tasks
share the one connection) — which is the isolation gc and fsck rely on between their mark and
their sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from envcache.store.errors import InsufficientStorage
from envcache.store.sqlite.schema import migrate

_SQLITE_FULL = 13  # "database or disk is full": the WAL could not grow

# The task (by id) that holds the write lock, so its own writes join its transaction.
_HOLDER: contextvars.ContextVar[int | None] = contextvars.ContextVar("envcache_sqlite_writer", default=None)


class Database:
    """``envcache.db`` of one data directory, migrated forward on open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with _full_disk_is_507():
            self.db = sqlite_utils.Database(path)
            self.db.execute("PRAGMA busy_timeout = 5000")
            self.db.enable_wal()
            # WAL + NORMAL: a commit survives a process crash; blob durability comes from fsync.
            self.db.execute("PRAGMA synchronous = NORMAL")
            self.schema_version = migrate(self.db)
        self._lock = asyncio.Lock()

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def close(self) -> None:
        self.db.close()

    # -- reading -------------------------------------------------------------------------------
    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        return self.conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return list(self.db.query(sql, params))

    # -- writing -------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[None]:
        """One atomic unit for the calling task; ``write=False`` reads one consistent snapshot
        and keeps other writers out without taking SQLite's write lock (a dry run)."""
        if _HOLDER.get() == id(asyncio.current_task()):
            yield  # already inside this task's transaction
            return
        async with self._lock:
            token = _HOLDER.set(id(asyncio.current_task()))
            try:
                with self._unit("BEGIN IMMEDIATE" if write else "BEGIN", commit=write):
                    yield
            finally:
                _HOLDER.reset(token)

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[sqlite3.Connection]:
        """A repository method's own writes: committed together, or part of the caller's
        transaction when one is open in this task."""
        if _HOLDER.get() == id(asyncio.current_task()):
            yield self.conn
            return
        async with self._lock:
            with self._unit("BEGIN IMMEDIATE", commit=True):
                yield self.conn

    @contextlib.contextmanager
    def _unit(self, begin: str, *, commit: bool) -> Iterator[None]:
        """Begin; commit (or, for a snapshot, end) when the block succeeds, roll back otherwise —
        also when the commit itself fails. A write the disk has no room for (the WAL could not
        grow) leaves as the caller's 507, never as an internal error."""
        self._commit_stray()
        with _full_disk_is_507():
            self.conn.execute(begin)
            try:
                yield
                if commit:
                    self.conn.commit()
            finally:
                if self.conn.in_transaction:
                    self.conn.rollback()

    def _commit_stray(self) -> None:
        # sqlite3's implicit transactions: a statement someone ran without committing (a test
        # poking the database) would make BEGIN fail; the next commit would take it anyway.
        if self.conn.in_transaction:
            self.conn.commit()


@contextlib.contextmanager
def _full_disk_is_507() -> Iterator[None]:
    """SQLite's "database or disk is full" (the WAL could not grow) is the caller's clear 507."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
            raise InsufficientStorage() from exc
        raise
