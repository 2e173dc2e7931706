"""Trees: a directory (or one file) as the sorted list of its files, and one digest over them.

A tree is what a step sees: its source snapshot, each input, each output. Each file is recorded
as (relative path, mode, size, sha256), sorted by path; the tree digest is the sha256 of that
listing as canonical JSON. So a digest depends on file names and content only — not on mtimes,
owners or where the directory lives — and the mode records only what git records, whether the
file is executable. File digests are sha256 (not envcache's faster xxh3) because each is also
the OCI blob digest of that file: storing a snapshot or an output as an artifact needs no second
pass over the bytes, and the listing itself is a blob with the tree's digest.

Symbolic links are followed, as Azure ML's snapshot does (the file's content is what the script
reads); a loop or a broken link is an error naming the path, never silently dropped. Anything
that is neither a regular file nor a directory is an error too. Files are hashed one after the
other: sha256 with the CPU's SHA instructions outruns most disks on one core, and hashing on
threads measured slower on a loaded 2-core machine (lock traffic per small file). A
:class:`DigestCache` makes an unchanged tree a walk of ``stat`` calls.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from envcache.pipeline.digest_cache import DigestCache, RootDigests, Stamp, stamp_of
from envcache.pipeline.errors import TreeError
from envcache.pipeline.ignore import NO_RULES, IgnoreRules, ignore_rules
from envcache.pipeline.keys import canonical_json

MODE_REGULAR = "100644"
MODE_EXECUTABLE = "100755"

TreeKind = Literal["dir", "file"]


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str        # relative, "/"-separated
    mode: str        # MODE_REGULAR or MODE_EXECUTABLE
    size: int
    sha256: str      # hex


@dataclass(frozen=True)
class Tree:
    kind: TreeKind           # "file": one entry, named by the file's base name
    root: Path               # where it was read from: not part of the digest
    files: tuple[FileEntry, ...]
    digest: str              # "sha256:<hex>" of listing()
    hashed_files: int = 0    # how many files were read this time (the rest came from the cache)
    hashed_bytes: int = 0

    def listing(self) -> bytes:
        return _listing(self.kind, self.files)

    def has_file(self, relpath: str) -> bool:
        return any(entry.path == relpath for entry in self.files)


def _listing(kind: TreeKind, files: tuple[FileEntry, ...]) -> bytes:
    return canonical_json({"kind": kind, "files": [[f.path, f.mode, f.size, f.sha256] for f in files]})


def tree_from_listing(kind: TreeKind, files: list[tuple[str, str, int, str]], root: Path = Path(".")) -> Tree:
    """A tree sent as its listing (by a client that hashed it): the paths checked, the digest
    recomputed here — never taken from the sender — and the entries sorted as :func:`read_tree` does."""
    entries: list[FileEntry] = []
    for path, mode, size, sha256 in files:
        parts = path.split("/")
        if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise TreeError(f"{path!r}: not a relative path inside the tree")
        if mode not in (MODE_REGULAR, MODE_EXECUTABLE):
            raise TreeError(f"{path}: mode must be {MODE_REGULAR} or {MODE_EXECUTABLE}, got {mode!r}")
        entries.append(FileEntry(path, mode, size, sha256))
    entries.sort(key=lambda entry: entry.path)
    if len({entry.path for entry in entries}) != len(entries) or (kind == "file" and len(entries) != 1):
        raise TreeError("a tree lists each path once (a file tree: exactly one)")
    ordered = tuple(entries)
    return Tree(kind, root, ordered, "sha256:" + hashlib.sha256(_listing(kind, ordered)).hexdigest())


def snapshot(source_directory: Path, *, cache: DigestCache | None = None) -> Tree:
    """The snapshot of a step's source directory, minus what its ignore file excludes."""
    return read_tree(source_directory, rules=ignore_rules(Path(source_directory)), cache=cache)


def read_tree(path: Path, *, rules: IgnoreRules = NO_RULES, cache: DigestCache | None = None) -> Tree:
    """List and hash a directory (every file not excluded by ``rules``) or a single file."""
    path = Path(path)
    started_ns = time.time_ns()
    try:
        root_stat = path.stat()
    except OSError as exc:
        raise TreeError(f"{path}: {exc.strerror or exc}") from None
    kind: TreeKind
    if stat.S_ISDIR(root_stat.st_mode):
        kind = "dir"
        found = sorted(_walk(str(path), "", rules, frozenset({(root_stat.st_dev, root_stat.st_ino)})),
                       key=lambda item: item[0])
    elif stat.S_ISREG(root_stat.st_mode):
        kind = "file"
        found = [(_checked_name(path.name, path.name), str(path), root_stat)]
    else:
        raise TreeError(f"{path}: not a regular file or directory")

    known = cache.open(path) if cache is not None else None
    digests: dict[str, tuple[Stamp, str]] = {}
    hashed_files = hashed_bytes = 0
    for rel, abspath, st in found:
        cached = known.lookup(rel, st) if known is not None else None
        if cached is not None:
            digests[rel] = (stamp_of(st), cached)
        else:
            digests[rel] = _hash_file(rel, abspath)
            hashed_files += 1
            hashed_bytes += digests[rel][0][0]
    if known is not None:
        known.save(digests, started_ns)

    files = tuple(FileEntry(rel, MODE_EXECUTABLE if st.st_mode & stat.S_IXUSR else MODE_REGULAR,
                            digests[rel][0][0], digests[rel][1]) for rel, _, st in found)
    digest = "sha256:" + hashlib.sha256(_listing(kind, files)).hexdigest()
    return Tree(kind, path, files, digest, hashed_files=hashed_files, hashed_bytes=hashed_bytes)


def _checked_name(name: str, rel: str) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise TreeError(f"{rel.encode('utf-8', 'surrogateescape')!r}: file name is not UTF-8") from None
    return name


def _walk(directory: str, prefix: str, rules: IgnoreRules,
          ancestors: frozenset[tuple[int, int]]) -> Iterator[tuple[str, str, os.stat_result]]:
    """Yield (relative path, absolute path, stat) of every included regular file below ``directory``.

    ``ancestors`` holds the (device, inode) of each directory on the way down, so a symbolic link
    back up the tree is reported instead of followed forever.
    """
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        raise TreeError(f"{prefix or '.'}: cannot list the directory: {exc.strerror or exc}") from None
    for entry in entries:
        rel = prefix + _checked_name(entry.name, prefix + entry.name)
        try:
            is_dir = entry.is_dir()
            if is_dir:
                if rules.excludes_dir(rel, entry.name):
                    continue
                st = entry.stat()
                ident = (st.st_dev, st.st_ino)
                if ident in ancestors:
                    raise TreeError(f"{rel}: symbolic link loop (it leads back to a directory above it)")
                yield from _walk(entry.path, rel + "/", rules, ancestors | {ident})
                continue
            if rules.excludes_file(rel):
                continue
            st = entry.stat()
        except FileNotFoundError:
            raise TreeError(f"{rel}: broken symbolic link (or removed while being read)") from None
        except PermissionError:
            raise TreeError(f"{rel}: permission denied") from None
        if not stat.S_ISREG(st.st_mode):
            raise TreeError(f"{rel}: not a regular file or directory")
        yield rel, entry.path, st


def _hash_file(rel: str, abspath: str) -> tuple[Stamp, str]:
    """sha256 of one file, and its stamp — refusing a file that changes while it is read."""
    try:
        with open(abspath, "rb") as handle:
            before = stamp_of(os.fstat(handle.fileno()))
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
            after = stamp_of(os.fstat(handle.fileno()))
    except OSError as exc:
        raise TreeError(f"{rel}: cannot read: {exc.strerror or exc}") from None
    if before != after:
        raise TreeError(f"{rel}: changed while it was being read; run again once it is written")
    return before, digest
