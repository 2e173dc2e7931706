"""The storage picture, kept fresh without making a page wait for it.

The walk (:func:`envcache.store.usage.storage_usage`) reads every manifest once per daemon and
every blob row per run; a page must not pay that on each view. The last picture is served while
it is younger than ``MAX_AGE``; an older one is still served, and a new walk starts in the
background (one at a time). Only the very first view waits for a walk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from envcache.store import Store
from envcache.store.usage import ManifestGraph, StorageUsage, storage_usage

MAX_AGE = 60.0


class StorageMonitor:
    """The latest :class:`StorageUsage` of one store, refreshed in the background."""

    def __init__(self) -> None:
        self._graph = ManifestGraph()
        self._latest: StorageUsage | None = None
        self._running: asyncio.Task[StorageUsage] | None = None

    async def usage(self, store: Store) -> StorageUsage:
        if self._running is None and (self._latest is None or time.time() - self._latest.computed > MAX_AGE):
            self._running = asyncio.get_running_loop().create_task(self._walk(store))
        if self._latest is None and self._running is not None:
            return await asyncio.shield(self._running)
        assert self._latest is not None
        return self._latest

    async def close(self) -> None:
        """Stop a walk in progress (the daemon is shutting down; the store closes next)."""
        if self._running is not None:
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running

    async def _walk(self, store: Store) -> StorageUsage:
        try:
            self._latest = await storage_usage(store, self._graph)
            return self._latest
        finally:
            self._running = None
