"""Background pushes to upstream registries, with retries, backoff and a status table.

A push must never slow down or fail a build: the image is already in the local store and
answering. So pushes run as daemon-owned tasks; each attempt's outcome is written to the
store's push log, which is what ``status``/metrics read.
A push that is still pending when the daemon stops is picked up again by
:meth:`PushQueue.resume` on the next start.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from envcache.errors import EnvcacheError
from envcache.upstream.client import RegistryClient
from envcache.upstream.config import Upstream
from envcache.upstream.copy import push_image

if TYPE_CHECKING:
    from envcache.store import Store
    from envcache.store.interfaces import PushLog

log = logging.getLogger(__name__)

STATES = ("queued", "running", "retrying", "done", "failed")


def remote_repository(upstream: Upstream, local_repository: str) -> str:
    """``envcache/env`` locally → ``<prefix>/env`` upstream (same for stage and base repos)."""
    kind = local_repository.split("/", 1)[1] if local_repository.startswith("envcache/") else local_repository
    return upstream.repo(kind)


class PushQueue:
    """Pushes images to push-mode upstreams in background tasks with exponential backoff."""

    def __init__(self, store: Store, client_for: Callable[[Upstream], RegistryClient], *,
                 max_attempts: int = 5, backoff: float = 1.0, max_backoff: float = 60.0) -> None:
        self.store = store
        self._client_for = client_for
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._tasks: set[asyncio.Task[None]] = set()

    async def schedule(self, upstream: Upstream, repository: str, tag: str, mount_from: tuple[str, ...] = ()) -> str:
        """Queue one image for one upstream; returns the push id."""
        return (await self.schedule_many(upstream, [(repository, tag, mount_from)]))[0]

    async def schedule_many(self, upstream: Upstream, items: list[tuple[str, str, tuple[str, ...]]]) -> list[str]:
        """Queue images to push one after the other (stages before the image built on them, so
        the image's shared layers are already upstream: found by HEAD or mounted, not re-sent)."""
        now = time.time()
        jobs = [(uuid.uuid4().hex, repository, tag, mount_from) for repository, tag, mount_from in items]
        await self.store.pushes.add([
            {"id": push_id, "upstream": upstream.url, "repository": repository, "tag": tag,
             "remote_repository": remote_repository(upstream, repository), "digest": None, "state": "queued",
             "attempts": 0, "error": None, "bytes": 0, "mounted": 0, "created": now, "updated": now}
            for push_id, repository, tag, _ in jobs])
        self._start(upstream, jobs)
        return [job[0] for job in jobs]

    async def resume(self, upstreams: list[Upstream]) -> int:
        """Restart pushes a stopped daemon left unfinished; returns how many."""
        by_url = {u.url: u for u in upstreams if u.can_push}
        count = 0
        for row in await self.store.pushes.unfinished():
            upstream = by_url.get(row["upstream"])
            if upstream is None:
                await self.store.pushes.update(row["id"], state="failed", error="upstream no longer configured")
                continue
            self._start(upstream, [(row["id"], row["repository"], row["tag"], ())])
            count += 1
        return count

    def _start(self, upstream: Upstream, jobs: list[tuple[str, str, str, tuple[str, ...]]]) -> None:
        task = asyncio.get_running_loop().create_task(self._run_all(upstream, jobs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_all(self, upstream: Upstream, jobs: list[tuple[str, str, str, tuple[str, ...]]]) -> None:
        for push_id, repository, tag, mount_from in jobs:
            await self._run(push_id, upstream, repository, tag, mount_from)

    async def _run(self, push_id: str, upstream: Upstream, repository: str, tag: str,
                   mount_from: tuple[str, ...]) -> None:
        remote = remote_repository(upstream, repository)
        for attempt in range(1, self.max_attempts + 1):
            await self.store.pushes.update(push_id, state="running", attempts=attempt)
            try:
                stats = await push_image(self._client_for(upstream), self.store, repository, tag, remote, tag,
                                         mount_from=mount_from)
            except EnvcacheError as exc:
                error = str(exc)
            except Exception as exc:  # noqa: BLE001 - a push bug must not kill the daemon; record it
                error = f"{type(exc).__name__}: {exc}"
            else:
                await self.store.pushes.update(push_id, state="done", error=None, digest=stats.digest,
                                               bytes=stats.bytes_copied, mounted=stats.blobs_mounted)
                log.info("pushed %s:%s to %s/%s", repository, tag, upstream.url, remote)
                return
            if attempt == self.max_attempts:
                await self.store.pushes.update(push_id, state="failed", error=error)
                log.warning("push of %s:%s to %s failed after %d attempts: %s",
                            repository, tag, upstream.url, attempt, error)
                return
            await self.store.pushes.update(push_id, state="retrying", error=error)
            await asyncio.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every scheduled push has finished (tests, CLI ``push``, shutdown)."""
        if self._tasks:
            await asyncio.wait_for(asyncio.gather(*list(self._tasks), return_exceptions=True), timeout)

    async def aclose(self) -> None:
        """Stop pushing (daemon shutdown); unfinished rows stay queued for :meth:`resume`."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def push_status(pushes: PushLog, limit: int = 50) -> dict[str, Any]:
    """Counts per state and the latest pushes — for ``status``, ``upstream list`` and metrics."""
    counts = {state: 0 for state in STATES}
    counts.update(await pushes.counts())
    return {"counts": counts, "recent": await pushes.recent(limit) if limit else []}
