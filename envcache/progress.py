"""Progress for long work: a line at least every few seconds, never a long silence.

A build that runs pip for two minutes without printing, a 500 MB layer being compressed, an
image copied to an upstream: a person watching (or a CI system that kills silent jobs) cannot
tell that from a hang. :class:`Ticker` wraps a log function; while its block runs, whenever
nothing was logged for ``every`` seconds it logs what ``render()`` says now (the phase, the
bytes so far, the time elapsed). Lines that come anyway reset the clock, so a chatty step gets
no extra lines.

Work in a worker thread only updates plain counters that ``render`` reads; the line itself is
always written from the event loop, so log functions need not be thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import TracebackType

#: Seconds of silence before a progress line: well under the 8 s a watcher starts to wonder.
EVERY = 4.0


class Ticker:
    """``async with Ticker(log, render) as log:`` — ``log`` as before, plus a line from
    ``render(ticker)`` (skipped when it returns None) whenever ``every`` seconds pass without
    one. ``render`` may read :attr:`elapsed`, :attr:`quiet` and :attr:`last_line`."""

    def __init__(self, log: Callable[[str], None], render: Callable[[Ticker], str | None],
                 every: float = EVERY) -> None:
        self._log = log
        self._render = render
        self._every = every
        self._began = self._spoke = self._heard = time.monotonic()
        self.last_line = ""     # the last line logged through us (not our own progress lines)
        self._task: asyncio.Task[None] | None = None

    @property
    def elapsed(self) -> float:
        """Seconds since the block began."""
        return time.monotonic() - self._began

    @property
    def quiet(self) -> float:
        """Seconds since the last line logged through us."""
        return time.monotonic() - self._heard

    def __call__(self, line: str) -> None:
        self._spoke = self._heard = time.monotonic()
        self.last_line = line
        self._log(line)

    async def __aenter__(self) -> Ticker:
        self._began = self._spoke = self._heard = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self._spoke + self._every - time.monotonic()))
            if time.monotonic() - self._spoke >= self._every:
                line = self._render(self)
                self._spoke = time.monotonic()
                if line is not None:
                    self._log(line)


def size(count: float) -> str:
    """Bytes for people: ``812 B``, ``3.4 MB``, ``1.2 GB`` (powers of 1000, as docker shows them)."""
    units = ["B", "kB", "MB", "GB", "TB"]
    while count >= 1000 and len(units) > 1:
        count /= 1000
        units.pop(0)
    return f"{count:.0f} B" if units[0] == "B" else f"{count:.1f} {units[0]}"
