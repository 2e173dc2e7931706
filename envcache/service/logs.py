"""The daemon's log: warnings and errors on stderr, each kind of record at most once a minute.

WHY: one misbehaving client, or a resource running out (file descriptors, disk), repeats the same
error thousands of times a second; the campaign of issue 13 saw the log grow 63 MB in 30 s of
"Too many open files" tracebacks. What an operator needs is the first one, with its traceback,
and how often it recurred.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any


class RepeatFilter(logging.Filter):
    """Lets one record of each kind through per ``window`` seconds; the next one let through says
    how many were held back. A kind is the logger, the level, the message's first line (before
    arguments) and the exception type."""

    def __init__(self, window: float = 60.0, max_kinds: int = 1024) -> None:
        super().__init__()
        self.window = window
        self.max_kinds = max_kinds
        self._kinds: dict[tuple[Any, ...], list[float]] = {}  # kind → [window start, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        kind = (record.name, record.levelno, str(record.msg).split("\n", 1)[0][:200], exc_type)
        now = time.monotonic()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return False
        if len(self._kinds) >= self.max_kinds:
            self._kinds.clear()
        self._kinds[kind] = [now, 0]
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} [{int(seen[1])} more like this in the last {self.window:g}s were not logged]"
        return True


def log_to_stderr() -> None:
    """The daemon's log: warnings and errors to stderr, each kind at most once a minute."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter())
    logging.getLogger().addHandler(handler)
