"""What the daemon did, over time: hits, misses, pulls and builds per minute and per hour — the
series behind the dashboard's charts (Prometheus has the same counters as totals, but a
dashboard must not need a Prometheus server to draw a line).

The hit path only increments a dict entry: counts are batched in memory and written with the
periodic flush (:data:`envcache.service.app.FLUSH_INTERVAL`), like ``last_used``. Reads add the
batch not yet written, so a chart is current to the request. Each resolution keeps its own
retention and older buckets are pruned, so the table stays bounded (about
``len(NAMES) × (2 days of minutes + 35 days of hours)`` rows).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from envcache.store.interfaces import Activity as ActivityStore

MINUTE, HOUR = 60, 3600
#: resolution → seconds its buckets are kept.
RETENTION = {MINUTE: 2 * 86400, HOUR: 35 * 86400}
PRUNE_INTERVAL = 3600.0

#: The counters, in the order charts list them.
NAMES = ("hit", "miss", "pull", "built", "upstream", "failed")
LABELS = {"hit": "cache hits", "miss": "misses", "pull": "image pulls", "built": "builds",
          "upstream": "pulled from upstream", "failed": "failed builds"}


@dataclass(frozen=True)
class Window:
    """A chart's time range: which resolution it reads and how wide each point is."""

    label: str
    resolution: int
    seconds: int
    step: int
    bucket: str   # the step in words


WINDOWS = {w.label: w for w in (
    Window("1h", MINUTE, HOUR, MINUTE, "minute"),
    Window("24h", MINUTE, 86400, 15 * MINUTE, "15 minutes"),
    Window("7d", HOUR, 7 * 86400, 3 * HOUR, "3 hours"),
    Window("30d", HOUR, 30 * 86400, 12 * HOUR, "12 hours"),
)}


@dataclass(frozen=True)
class Series:
    """Dense series on one time axis: ``times[i]`` starts the bucket of ``values[name][i]``."""

    window: Window
    times: list[int]
    values: dict[str, list[int]]

    def total(self, name: str) -> int:
        return sum(self.values[name])

    def active_since(self) -> int:
        """Start of the first bucket with any count (the end of the axis when all are zero)."""
        return next((t for i, t in enumerate(self.times) if any(v[i] for v in self.values.values())),
                    self.times[-1])


class Activity:
    """The daemon's counters per time bucket (one per app)."""

    def __init__(self, store: ActivityStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._pending: Counter[tuple[str, int]] = Counter()   # (name, minute start) → n
        self._pruned = 0.0

    def count(self, name: str, n: int = 1) -> None:
        """Note ``n`` events of counter ``name`` now (memory only)."""
        self._pending[(name, int(self._clock()) // MINUTE * MINUTE)] += n

    async def flush(self) -> None:
        """Write the batch to both resolutions; prune expired buckets now and then."""
        pending, self._pending = self._pending, Counter()
        if pending:
            rows: Counter[tuple[int, str, int]] = Counter()
            for (name, minute), n in pending.items():
                rows[(MINUTE, name, minute)] += n
                rows[(HOUR, name, minute // HOUR * HOUR)] += n
            try:
                await self._store.add(rows)
            except BaseException:
                self._pending.update(pending)  # nothing was written (add is atomic): next flush
                raise
        now = self._clock()
        if now - self._pruned >= PRUNE_INTERVAL:
            self._pruned = now
            for resolution, keep in RETENTION.items():
                await self._store.prune(resolution, int(now - keep))

    async def series(self, window: Window) -> Series:
        """Every counter over ``window``, zeros where nothing happened, the unwritten batch included."""
        step = window.step
        end = int(self._clock()) // step * step
        start = end - window.seconds + step
        times = list(range(start, end + 1, step))
        values = {name: [0] * len(times) for name in NAMES}

        def add(name: str, at: int, n: int) -> None:
            index = (at // step * step - start) // step
            if name in values and 0 <= index < len(times):
                values[name][index] += n

        for name, at, n in await self._store.series(window.resolution, start, step):
            add(name, at, n)
        for (name, minute), n in self._pending.items():
            add(name, minute, n)
        return Series(window, times, values)
