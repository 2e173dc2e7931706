"""CPU-heavy definition work (parsing, canonicalising) in a separate process, off the event loop.

WHY: pip's grammar is slow — pip-requirements-parser builds an option parser for every line —
so a 249 KB, 20,000-line requirements document took 4.9 s to load, and canonicalising its
20,000 requirements another half second. On the event loop that is 5 s in which no other
client is answered, not even a cache hit. A thread would not help: the work is pure Python
and holds the GIL. So large definitions go to one worker process (spawned on first use, so a
daemon that never sees one never starts it), behind a bounded queue: past it, a request is
answered 503 rather than waiting without end. Small definitions — nearly all of them, and the
hit path's, which is memoised anyway — stay inline, where a round trip would cost more.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, TypeVar

from envcache.errors import EnvcacheError

if TYPE_CHECKING:
    from envcache.definition.model import Definition

T = TypeVar("T")

#: A request body at least this large is parsed in the worker (about 300 requirement lines;
#: inline, that is 50-100 ms of the event loop on the benchmark machine).
LARGE_BODY = 8 * 1024
#: A definition with at least this many packages and options is canonicalised in the worker.
LARGE_DEFINITION = 500


class ParserBusy(EnvcacheError):
    """Too many large definitions are waiting for the parser."""

    http_status = 503


def is_large(definition: Definition) -> bool:
    """Does canonicalising ``definition`` take long enough to move off the event loop?"""
    deps = definition.python.conda_dependencies
    count = len(deps.pip_packages) + len(deps.conda_packages) + len(deps.pip_options)
    for override in definition.variants.values():
        count += len(override.pip_packages) + len(override.conda_packages)
    return count >= LARGE_DEFINITION


class Offload:
    """One worker process for large definitions, at most ``max_waiting`` calls queued for it."""

    def __init__(self, max_waiting: int = 8) -> None:
        self._max_waiting = max_waiting
        self._pending = 0
        self._pool: ProcessPoolExecutor | None = None
        self._worker: Future[int] | None = None  # the worker's pid, so close() can stop it

    async def maybe(self, large: bool, fn: Callable[..., T], /, *args: Any) -> T:
        """``fn(*args)``: in the worker when ``large``, else right here."""
        return await self.run(fn, *args) if large else fn(*args)

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """``fn(*args)`` in the worker (``fn``, its arguments and result must pickle)."""
        if self._pending > self._max_waiting:
            raise ParserBusy(f"{self._pending} large definitions are being parsed already; retry shortly")
        if self._pool is None:
            # spawn, not fork: the daemon has threads (SQLite, the default executor) to not copy.
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            self._worker = self._pool.submit(os.getpid)
        pool = self._pool
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))
        except BrokenProcessPool:
            if self._pool is pool:
                self._pool = None  # the next call starts a fresh worker
            raise ParserBusy("the parser process stopped while parsing this definition; retry") from None
        finally:
            self._pending -= 1

    def close(self) -> None:
        """Stop the worker now: what it is parsing is abandoned (shutdown alone would wait for it)."""
        if self._pool is None:
            return
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._worker is not None and self._worker.done() and not self._worker.exception():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._worker.result(), signal.SIGTERM)
        self._pool = self._worker = None
