"""File digests remembered between runs, so hashing an unchanged tree reads no file content.

One small JSON file per tree root, under a cache directory the caller chooses (the daemon's data
directory; the user cache directory otherwise). An entry is trusted only while the file's
(size, mtime_ns, inode, ctime_ns) are exactly as recorded for that path; any difference and the
file is read and hashed again. ctime matters: rewriting a file with the same size and putting its
mtime back (``touch -r``, ``rsync -t``, a checkout) still moves ctime.

Racy entries are never written. File timestamps come from a coarse kernel clock, so a file
rewritten within a few milliseconds of being hashed can keep its exact stamp; like git's
"racily clean" rule, an entry whose mtime or ctime is within ``racy_window_ns`` of the moment the
hashing started is left out, and its file is simply hashed again next time. Every write is atomic
(temp file, fsync, rename); an unreadable or foreign cache file counts as empty — it is a cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xxhash

from envcache.pipeline.definition_io import atomic_write

CACHE_VERSION = 1
RACY_WINDOW_NS = 2_000_000_000

Stamp = tuple[int, int, int, int]


def stamp_of(st: os.stat_result) -> Stamp:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class RootDigests:
    """The remembered digests of one tree root, for one listing of it."""

    def __init__(self, file: Path, root: str, known: dict[str, list[Any]], racy_window_ns: int) -> None:
        self._file = file
        self._root = root
        self._known = known
        self._racy_window_ns = racy_window_ns

    def lookup(self, relpath: str, st: os.stat_result) -> str | None:
        entry = self._known.get(relpath)
        if isinstance(entry, list) and len(entry) == 5 and tuple(entry[:4]) == stamp_of(st):
            return str(entry[4])
        return None

    def save(self, current: Mapping[str, tuple[Stamp, str]], started_ns: int) -> None:
        """Remember this listing's digests (and forget files no longer listed)."""
        settled = started_ns - self._racy_window_ns
        entries = {rel: [*stamp, digest] for rel, (stamp, digest) in current.items()
                   if stamp[1] < settled and stamp[3] < settled}
        if entries != self._known:
            atomic_write(self._file, json.dumps({"version": CACHE_VERSION, "root": self._root, "files": entries},
                                                separators=(",", ":")))
            self._known = entries


class DigestCache:
    """A directory of per-root digest files."""

    def __init__(self, directory: Path, *, racy_window_ns: int = RACY_WINDOW_NS) -> None:
        self.directory = Path(directory)
        self.racy_window_ns = racy_window_ns

    def open(self, root: Path) -> RootDigests:
        key = str(Path(root).resolve())
        file = self.directory / f"{xxhash.xxh3_128_hexdigest(key.encode())}.json"
        known: dict[str, list[Any]] = {}
        try:
            data = json.loads(file.read_bytes())
            if data.get("version") == CACHE_VERSION and data.get("root") == key and isinstance(data.get("files"), dict):
                known = data["files"]
        except (OSError, ValueError, AttributeError):
            pass
        return RootDigests(file, key, known, self.racy_window_ns)
