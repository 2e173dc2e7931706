"""Garbage collection of a data directory: mark from the roots, sweep what nothing reaches.

Roots are every tag (``envcache/env:*`` images, ``envcache/stage:*`` stage images, anything
pushed through ``/v2/``) and every ``images`` row. From a root manifest the mark follows index
→ child manifests, manifest → config + layers, and referrers (manifests whose ``subject`` is a
reachable manifest). Everything else — untagged manifests, blobs no reachable manifest names,
idle upload sessions, stale temp files — is removed once it is older than the grace period.

WHY a grace period and one write transaction: a blob that was just uploaded is unreferenced
until its manifest arrives (seconds later, or an hour later for a slow client), and a manifest
pushed by digest is untagged until its tag follows. Anything touched within ``grace`` seconds
(created, last read, or renamed into place — the file's ctime) survives. The mark and the index
deletions happen inside one ``BEGIN IMMEDIATE`` transaction, so no other writer changes the index
in between; blob files are unlinked only after that commit (a crash in between leaves files
without rows, which the next GC removes — never rows without files).

``--keep-days N`` first expires ``images`` rows unused for N days (``last_used``) and deletes
their tags, so the same run sweeps them. An index tag over variants (``envcache/env:<spec
hash>``) goes too once every image it lists has expired; while a sibling variant is still in use
the index keeps the expired one reachable (reported in ``notes``) until the next rebuild
replaces that entry.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envcache.errors import EnvcacheError, InvalidInput
from envcache.oci import is_digest, parse_manifest
from envcache.store.schema import LAYER_BLOBS

if TYPE_CHECKING:
    from aiohttp import web

    from envcache.store.store import Store

DEFAULT_GRACE = 3600.0
DEFAULT_UPLOAD_TTL = 3600.0


class GcAborted(EnvcacheError):
    """GC cannot run safely: a manifest in use is unreadable, or another process owns the store."""

    http_status = 409  # the store's state, not the request, is what is wrong


@dataclass
class ManifestRefs:
    """What one manifest points at: child manifests (of an index) and blobs (config, layers)."""

    children: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)
    media_types: dict[str, str] = field(default_factory=dict)  # blob digest → descriptor media type


def manifest_refs(body: bytes) -> ManifestRefs:
    """A stored manifest or index body's references; raises InvalidInput when it is not one."""
    manifest = parse_manifest(body)
    if manifest.is_index:
        return ManifestRefs(children=[child.digest for child in manifest.manifests])
    blobs = manifest.blobs
    return ManifestRefs(blobs=[d.digest for d in blobs],
                        media_types={d.digest: d.media_type for d in blobs if d.media_type is not None})


@dataclass
class GcReport:
    """What a GC run removed (or, with ``dry_run``, would remove)."""

    dry_run: bool
    grace_seconds: float
    keep_days: float | None
    images_expired: list[str] = field(default_factory=list)
    tags_deleted: list[str] = field(default_factory=list)  # "repository:tag"
    manifests_deleted: int = 0
    blobs_deleted: int = 0
    blob_bytes_freed: int = 0
    blobs_kept: int = 0
    blobs_kept_young: int = 0  # unreferenced, but inside the grace period
    links_pruned: int = 0
    uploads_expired: int = 0
    upload_bytes_freed: int = 0
    tmp_files_deleted: int = 0
    tmp_bytes_freed: int = 0
    repositories_deleted: int = 0
    layer_rows_deleted: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bytes_freed(self) -> int:
        return self.blob_bytes_freed + self.upload_bytes_freed + self.tmp_bytes_freed

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_freed": self.bytes_freed}

    def summary(self) -> str:
        """Human text for the CLI."""
        verb = "would free" if self.dry_run else "freed"
        lines = [
            f"gc{' (dry run)' if self.dry_run else ''}: {verb} {_human(self.bytes_freed)} "
            f"({self.bytes_freed} bytes) in {self.seconds:.2f}s",
            f"  images expired:     {len(self.images_expired)}",
            f"  tags deleted:       {len(self.tags_deleted)}",
            f"  manifests deleted:  {self.manifests_deleted}",
            f"  blobs deleted:      {self.blobs_deleted} ({_human(self.blob_bytes_freed)})",
            f"  blobs kept:         {self.blobs_kept} ({self.blobs_kept_young} only because younger than "
            f"{self.grace_seconds:g}s)",
            f"  uploads expired:    {self.uploads_expired} ({_human(self.upload_bytes_freed)})",
            f"  temp files deleted: {self.tmp_files_deleted} ({_human(self.tmp_bytes_freed)})",
        ]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def iter_blob_files(root: Path) -> Iterator[tuple[str | None, Path]]:
    """Every file under ``blobs/``: ``(digest, path)``, digest None for a name that is no blob."""
    for algorithm_dir in sorted(root.iterdir()) if root.is_dir() else []:
        for fan in sorted(algorithm_dir.iterdir()) if algorithm_dir.is_dir() else [algorithm_dir]:
            for path in sorted(fan.iterdir()) if fan.is_dir() else [fan]:
                digest = f"{algorithm_dir.name}:{path.name}"
                good = path.is_file() and is_digest(digest) and fan.name == path.name[:2] and fan.parent == algorithm_dir
                yield (digest if good else None), path


def _newest(path: Path) -> float:
    """Latest of mtime and ctime (a rename into place updates ctime); 0 when gone."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return 0.0
    return max(st.st_mtime, st.st_ctime)


def _tree_newest(path: Path) -> float:
    newest = _newest(path)
    if path.is_dir():
        for dirpath, _dirs, files in os.walk(path):
            for name in files:
                newest = max(newest, _newest(Path(dirpath) / name))
    return newest


def _tree_size(path: Path) -> int:
    if path.is_dir():
        return sum((Path(d) / f).stat().st_size for d, _, files in os.walk(path) for f in files
                   if (Path(d) / f).is_file())
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def run_gc(store: Store, *, dry_run: bool = False, keep_days: float | None = None,
           grace: float = DEFAULT_GRACE, upload_ttl: float = DEFAULT_UPLOAD_TTL,
           upload_busy: Callable[[str], bool] | None = None, now: float | None = None) -> GcReport:
    """Mark and sweep ``store``; returns what was (or would be) removed.

    Runs synchronously on the caller's thread (the SQLite connection's). ``upload_busy(id)``
    tells the daemon's in-flight upload sessions apart so an idle-looking session that is
    receiving bytes right now is kept.
    """
    if keep_days is not None and keep_days < 0:
        raise InvalidInput(f"keep_days must be 0 or more, not {keep_days}")
    if grace < 0:
        raise InvalidInput(f"grace must be 0 or more seconds, not {grace}")
    started = time.monotonic()
    now = time.time() if now is None else now
    cutoff = now - grace
    report = GcReport(dry_run=dry_run, grace_seconds=grace, keep_days=keep_days)
    db = store.db
    sql = db.conn.execute
    doomed_files: list[Path] = []
    # sqlite3's implicit transactions: a statement someone ran without committing would make
    # BEGIN fail; the next ``with conn:`` would commit it anyway, so commit it now.
    if db.conn.in_transaction:
        db.conn.commit()
    # A dry run still reads one consistent snapshot; a real run also keeps every writer out.
    sql("BEGIN" if dry_run else "BEGIN IMMEDIATE")
    try:
        expired_rows, dead_tags = _expire_images(store, sql, keep_days, now, report)
        reachable, links = _mark(store, sql, dead_tags, expired_rows, cutoff)
        expired_digests = {(row[1], row[2]) for row in expired_rows}
        for repo, digest in sorted(expired_digests & reachable):
            report.notes.append(f"expired image manifest {repo}@{digest} is still referenced (by an index or "
                                "another tag), so it stays")

        # Manifests: unreachable and older than the grace period.
        dead_manifests = [(r, d) for r, d, created in sql("SELECT repository, digest, created FROM manifests")
                          if (r, d) not in reachable and (created or 0) < cutoff]
        report.manifests_deleted = len(dead_manifests)
        reachable_blobs = {d for _, d in links}

        # Blobs: from the files (the truth) and the rows (the index) alike.
        rows = {d: (size, max(created or 0, last_access or 0)) for d, size, created, last_access
                in sql("SELECT digest, size, created, last_access FROM blobs")}
        files = {d: p for d, p in iter_blob_files(store.blobs.root) if d is not None}
        dead_blobs: list[str] = []
        for digest in sorted(set(rows) | set(files)):
            if digest in reachable_blobs:
                report.blobs_kept += 1
                continue
            path = files.get(digest)
            newest = max(rows.get(digest, (0, 0.0))[1], _newest(path) if path else 0.0)
            if newest >= cutoff:
                report.blobs_kept += 1
                report.blobs_kept_young += 1
                continue
            dead_blobs.append(digest)
            report.blobs_deleted += 1
            if path is not None:
                report.blob_bytes_freed += path.stat().st_size
                doomed_files.append(path)
        dead_blob_set = set(dead_blobs)

        # Links of surviving blobs into repositories whose manifests no longer use them.
        stale_links = [(r, d) for r, d, created in sql("SELECT repository, digest, created FROM repository_blobs")
                       if d not in dead_blob_set and (r, d) not in links and (created or 0) < cutoff]
        report.links_pruned = len(stale_links)

        # Upload sessions idle past their TTL (not one receiving bytes right now), orphan files.
        dead_sessions: list[str] = []
        for (session_id,) in sql("SELECT id FROM upload_sessions WHERE updated < ?", [now - upload_ttl]):
            if upload_busy is not None and upload_busy(session_id):
                continue
            dead_sessions.append(session_id)
            report.uploads_expired += 1
            report.upload_bytes_freed += _tree_size(store.upload_path(session_id))
            doomed_files.append(store.upload_path(session_id))
        sessions = {row[0] for row in sql("SELECT id FROM upload_sessions")}
        uploads_dir = store.data_dir / "uploads"
        for entry in sorted(uploads_dir.iterdir()) if uploads_dir.is_dir() else []:
            if entry.name not in sessions and _tree_newest(entry) < cutoff:
                report.upload_bytes_freed += _tree_size(entry)
                doomed_files.append(entry)

        for entry in sorted(store.blobs.tmp.iterdir()) if store.blobs.tmp.is_dir() else []:
            if _tree_newest(entry) < cutoff:
                report.tmp_files_deleted += 1
                report.tmp_bytes_freed += _tree_size(entry)
                doomed_files.append(entry)

        # The build's diff_id → blob map must not point ingest at a swept blob.
        layer_rows = sum(1 for (d,) in sql(f"SELECT blob_digest FROM {LAYER_BLOBS}")
                         if d in dead_blob_set or (d not in rows and d not in files))
        report.layer_rows_deleted = layer_rows

        if not dry_run:
            for key, _repo, _digest in expired_rows:
                sql("DELETE FROM images WHERE key = ?", [key])
            for repo, tag in dead_tags:
                sql("DELETE FROM tags WHERE repository = ? AND tag = ?", [repo, tag])
            for repo, digest in dead_manifests:
                sql("DELETE FROM manifests WHERE repository = ? AND digest = ?", [repo, digest])
                sql("DELETE FROM tags WHERE repository = ? AND digest = ?", [repo, digest])
            for digest in dead_blobs:
                sql("DELETE FROM blobs WHERE digest = ?", [digest])
                sql("DELETE FROM repository_blobs WHERE digest = ?", [digest])
            for repo, digest in stale_links:
                sql("DELETE FROM repository_blobs WHERE repository = ? AND digest = ?", [repo, digest])
            for session_id in dead_sessions:
                sql("DELETE FROM upload_sessions WHERE id = ?", [session_id])
            if layer_rows:
                sql(f"DELETE FROM {LAYER_BLOBS} WHERE blob_digest NOT IN (SELECT digest FROM blobs)")
            cursor = sql(
                "DELETE FROM repositories WHERE created < ? "
                "AND name NOT IN (SELECT repository FROM manifests) AND name NOT IN (SELECT repository FROM tags) "
                "AND name NOT IN (SELECT repository FROM repository_blobs) "
                "AND name NOT IN (SELECT repository FROM upload_sessions)", [cutoff])
            report.repositories_deleted = cursor.rowcount
    except BaseException:
        db.conn.rollback()
        raise
    if dry_run:
        db.conn.rollback()
    else:
        db.conn.commit()
        # Only now that the index no longer names them may the files go.
        for path in doomed_files:
            _remove(path)
    report.seconds = time.monotonic() - started
    return report


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _expire_images(store: Store, sql: Callable[..., Any], keep_days: float | None, now: float,
                   report: GcReport) -> tuple[list[tuple[str, str, str]], set[tuple[str, str]]]:
    """``images`` rows unused for ``keep_days`` and the tags that go with them."""
    if keep_days is None:
        return [], set()
    limit = now - keep_days * 86400
    expired: list[tuple[str, str, str]] = [(k, r, d) for k, r, d in sql(
        "SELECT key, repository, manifest_digest FROM images WHERE COALESCE(last_used, created, 0) < ?", [limit])]
    if not expired:
        return [], set()
    report.images_expired = [row[0] for row in expired]
    expired_keys = set(report.images_expired)
    live = [tuple(row) for row in sql("SELECT key, repository, tag, manifest_digest FROM images")
            if row[0] not in expired_keys]
    live_tags = {(r, t) for _, r, t, _ in live}
    live_manifests = {(r, d) for _, r, _, d in live}
    dead: set[tuple[str, str]] = set()
    for key, repo, tag, _digest in (tuple(row) for row in sql(
            "SELECT key, repository, tag, manifest_digest FROM images")):
        if key in expired_keys and tag and (repo, tag) not in live_tags:
            dead.add((repo, tag))
    # Index tags (envcache/env:<spec hash>) whose every listed image has expired.
    expired_manifests = {(r, d) for _, r, d in expired}
    for repo in sorted({r for _, r, _ in expired if r}):
        for tag, digest in sql("SELECT tag, digest FROM tags WHERE repository = ?", [repo]).fetchall():
            if (repo, tag) in dead:
                continue
            row = sql("SELECT 1 FROM manifests WHERE repository = ? AND digest = ?", [repo, digest]).fetchone()
            if row is None:
                continue
            children = _children_of(store, digest)
            if children and all((repo, c) in expired_manifests and (repo, c) not in live_manifests for c in children):
                dead.add((repo, tag))
    report.tags_deleted = sorted(f"{r}:{t}" for r, t in dead)
    return expired, dead


def _children_of(store: Store, digest: str) -> list[str]:
    """Child manifests of an index (empty for an image manifest or an unreadable body)."""
    try:
        return manifest_refs(store.blobs.path(digest).read_bytes()).children
    except (OSError, InvalidInput):
        return []


def _mark(store: Store, sql: Callable[..., Any], dead_tags: set[tuple[str, str]],
          expired_rows: list[tuple[str, str, str]], cutoff: float) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Reachable manifests as ``(repo, digest)`` and the ``(repo, blob)`` links they need."""
    known: dict[tuple[str, str], float] = {}
    referrers: dict[tuple[str, str], list[str]] = {}
    for repo, digest, subject, created in sql("SELECT repository, digest, subject, created FROM manifests"):
        known[(repo, digest)] = created or 0
        if subject:
            referrers.setdefault((repo, subject), []).append(digest)
    expired_keys = {row[0] for row in expired_rows}
    roots = [(r, d) for r, t, d in sql("SELECT repository, tag, digest FROM tags") if (r, t) not in dead_tags]
    roots += [(r, d) for k, r, d in sql("SELECT key, repository, manifest_digest FROM images")
              if k not in expired_keys and r and d]
    # Young manifests are roots too: a manifest pushed by digest waits for its tag.
    roots += [key for key, created in known.items() if created >= cutoff]
    reachable: set[tuple[str, str]] = set()
    links: set[tuple[str, str]] = set()
    todo = [root for root in roots if root in known]
    while todo:
        node = todo.pop()
        if node in reachable:
            continue
        reachable.add(node)
        repo, digest = node
        links.add(node)
        try:
            body = store.blobs.path(digest).read_bytes()
            refs = manifest_refs(body)
        except (OSError, InvalidInput) as exc:
            raise GcAborted(
                f"manifest {repo}@{digest} is in use but its body cannot be read ({type(exc).__name__}: {exc}); "
                "nothing was deleted. Run `envcache fsck --repair` first") from None
        for child in refs.children:
            if (repo, child) in known:
                todo.append((repo, child))
            else:
                links.add((repo, child))  # an index may list content kept elsewhere; keep it if here
        links.update((repo, blob) for blob in refs.blobs)
        todo.extend((repo, r) for r in referrers.get(node, []))
    return reachable, links


_API_FIELDS = {"dry_run": "boolean", "keep_days": "number of days or null", "grace_seconds": "number of seconds"}


def gc_options(data: dict[str, Any]) -> dict[str, Any]:
    """``run_gc`` keyword arguments from a JSON body; InvalidInput naming the bad field."""
    unknown = sorted(set(data) - set(_API_FIELDS))
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown}; valid fields: "
                           + ", ".join(f"{k} ({v})" for k, v in _API_FIELDS.items()))
    dry_run = data.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidInput("dry_run: must be true or false")
    options: dict[str, Any] = {"dry_run": dry_run, "keep_days": None, "grace": DEFAULT_GRACE}
    for name, key in (("keep_days", "keep_days"), ("grace_seconds", "grace")):
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise InvalidInput(f"{name}: must be a number >= 0, not {value!r}")
        options[key] = float(value)
    return options


async def gc_handler(request: web.Request) -> web.Response:
    """``POST /api/v1/gc`` (body optional: ``{"dry_run", "keep_days", "grace_seconds"}``) → GcReport.

    Runs on the event loop (the store's SQLite connection lives there), so no request handler
    interleaves with the sweep; upload sessions receiving bytes right now are left alone.
    """
    from aiohttp import web

    from envcache.registry.routes import UPLOADS

    raw = await request.read()
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    options = gc_options(data)
    store: Store = request.app["store"]
    if not store.owner:
        raise GcAborted(f"this daemon does not own {store.data_dir} (another process holds its lock); "
                        "run gc where the lock is held")
    config = request.app.get("config")
    ttl = float(config.registry.upload_session_ttl) if config is not None else DEFAULT_UPLOAD_TTL
    uploads = request.app.get(UPLOADS)
    busy = (lambda sid: uploads.lock(sid).locked()) if uploads is not None else None
    report = run_gc(store, upload_ttl=ttl, upload_busy=busy, **options)
    if uploads is not None and not options["dry_run"]:
        for session_id in {*uploads.locks, *uploads.progress}:
            if store.get_upload(session_id) is None:
                uploads.forget(session_id)
    return web.json_response(report.to_dict())
