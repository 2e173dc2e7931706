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
deletions happen inside one store transaction, so no other writer changes the index in between;
blob files are deleted only after that commit (a crash in between leaves files without rows,
which the next GC removes — never rows without files). Idle upload sessions then go through the
store's one expiry path.

gc reads every repository through its interface (``roots_for_gc`` of tags and of the image
index, the blob rows and links, the layer map) and never another layer's tables.

Wheel artifacts (``envcache/wheel:<sha256 hex>``) are tagged like any artifact, but the tag of a
wheel that is not an uploaded wheel (removed with ``wheels rm``, or pulled for a build) only
lives while a registered environment or a cached image pins the wheel: once nothing does and the
grace period has passed, the tag goes and the same run sweeps the wheel.

``--keep-days N`` first expires ``images`` rows unused for N days (``last_used``) and deletes
their tags, so the same run sweeps them. An index tag over variants (``envcache/env:<spec
hash>``) goes too once every image it lists has expired; while a sibling variant is still in use
the index keeps the expired one reachable (reported in ``notes``) until the next rebuild
replaces that entry.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from envcache.definition.canonical import wheel_digests
from envcache.errors import EnvcacheError, InvalidInput
from envcache.oci import WHEEL_REPOSITORY, parse_manifest
from envcache.store.records import ManifestRow
from envcache.store.store import Busy, Store

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
    bytes_freed: int = 0  # blobs, uploads and temp files together
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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


async def run_gc(store: Store, *, dry_run: bool = False, keep_days: float | None = None,
                 grace: float = DEFAULT_GRACE, upload_ttl: float = DEFAULT_UPLOAD_TTL,
                 upload_busy: Busy | None = None, now: float | None = None) -> GcReport:
    """Mark and sweep ``store``; returns what was (or would be) removed.

    ``upload_busy(id)`` tells the daemon's in-flight upload sessions apart so an idle-looking
    session that is receiving bytes right now is kept.
    """
    if keep_days is not None and keep_days < 0:
        raise InvalidInput(f"keep_days must be 0 or more, not {keep_days}")
    if grace < 0:
        raise InvalidInput(f"grace must be 0 or more seconds, not {grace}")
    started = time.monotonic()
    now = time.time() if now is None else now
    cutoff = now - grace
    report = GcReport(dry_run=dry_run, grace_seconds=grace, keep_days=keep_days)
    doomed: list[str] = []
    stale_temp: list[str] = []
    # A dry run still reads one consistent snapshot; a real run also changes it.
    async with store.transaction(write=not dry_run):
        manifests = await store.manifests.all()
        expired, dead_tags = await _expire_images(store, keep_days, now, report)
        dead_tags |= await _unkept_wheels(store, {key for key, _, _ in expired}, cutoff)
        report.tags_deleted = sorted(f"{r}:{t}" for r, t in dead_tags)
        reachable, links = await _mark(store, manifests, dead_tags, expired, cutoff)
        for repo, digest in sorted({(r, d) for _, r, d in expired} & reachable):
            report.notes.append(f"expired image manifest {repo}@{digest} is still referenced (by an index or "
                                "another tag), so it stays")

        # Manifests: unreachable and older than the grace period.
        dead_manifests = [(m.repository, m.digest) for m in manifests
                          if (m.repository, m.digest) not in reachable and m.created < cutoff]
        report.manifests_deleted = len(dead_manifests)
        reachable_blobs = {d for _, d in links}

        # Blobs: from the files (the truth) and the rows (the index) alike.
        rows = {b.digest: max(b.created, b.last_access) for b in await store.blobs.all()}
        files = {entry.digest: entry async for entry in store.files.blobs() if entry.digest is not None}
        dead_blobs: list[str] = []
        for digest in sorted(set(rows) | set(files)):
            if digest in reachable_blobs:
                report.blobs_kept += 1
                continue
            entry = files.get(digest)
            if max(rows.get(digest, 0.0), entry.modified if entry else 0.0) >= cutoff:
                report.blobs_kept += 1
                report.blobs_kept_young += 1
                continue
            dead_blobs.append(digest)
            report.blobs_deleted += 1
            if entry is not None:
                report.blob_bytes_freed += entry.size
                doomed.append(digest)
        dead_blob_set = set(dead_blobs)

        # Links of surviving blobs into repositories whose manifests no longer use them.
        stale_links = [(r, d) for r, d, created in await store.blobs.links()
                       if d not in dead_blob_set and (r, d) not in links and created < cutoff]
        report.links_pruned = len(stale_links)

        # The build's diff_id → blob map must not point ingest at a swept blob.
        gone_layers = [d for d in await store.layers.blob_digests()
                       if d in dead_blob_set or (d not in rows and d not in files)]
        report.layer_rows_deleted = len(gone_layers)

        for entry in await store.files.temp_entries():
            if entry.modified < cutoff:
                report.tmp_files_deleted += 1
                report.tmp_bytes_freed += entry.size
                stale_temp.append(entry.key)

        if not dry_run:
            await store.images.delete([key for key, _repo, _digest in expired])
            await store.manifests.delete_tags(sorted(dead_tags))
            await store.manifests.delete_many(dead_manifests)
            await store.blobs.forget(dead_blobs)
            await store.blobs.unlink_many(stale_links)
            await store.layers.forget_blobs(sorted(set(gone_layers)))
    if not dry_run:
        # Only now that the index no longer names them may the files go.
        for digest in doomed:
            await store.files.delete(digest)
        for key in stale_temp:
            await store.files.remove_temp(key)

    # Upload sessions idle past their TTL (not one receiving bytes right now), then orphan data.
    expired_uploads = await store.expire_uploads(upload_ttl, upload_busy, now=now, dry_run=dry_run)
    report.uploads_expired = len(expired_uploads)
    report.upload_bytes_freed = sum(entry.size for entry in expired_uploads)
    sessions = {session.id for session in await store.uploads.all()}
    for entry in await store.spool.upload_entries():
        if entry.key not in sessions and entry.modified < cutoff:
            report.upload_bytes_freed += entry.size
            if not dry_run:
                await store.spool.delete_upload(entry.key)
    if not dry_run:
        report.repositories_deleted = await store.manifests.drop_empty_repositories(cutoff)
    report.bytes_freed = report.blob_bytes_freed + report.upload_bytes_freed + report.tmp_bytes_freed
    report.seconds = time.monotonic() - started
    return report


async def _expire_images(store: Store, keep_days: float | None, now: float,
                         report: GcReport) -> tuple[list[tuple[str, str, str]], set[tuple[str, str]]]:
    """Image-index entries unused for ``keep_days`` and the tags that go with them."""
    if keep_days is None:
        return [], set()
    expired = await store.images.unused_since(now - keep_days * 86400)
    if not expired:
        return [], set()
    report.images_expired = [key for key, _, _ in expired]
    expired_keys = set(report.images_expired)
    images = await store.images.all_tags()
    live = [row for row in images if row[0] not in expired_keys]
    live_tags = {(r, t) for _, r, t, _ in live}
    live_manifests = {(r, d) for _, r, _, d in live}
    dead = {(repo, tag) for key, repo, tag, _digest in images
            if key in expired_keys and tag and (repo, tag) not in live_tags}
    # Index tags (envcache/env:<spec hash>) whose every listed image has expired.
    expired_manifests = {(r, d) for _, r, d in expired}
    for repo in sorted({r for _, r, _ in expired if r}):
        for tag, digest in await store.manifests.tagged(repo):
            if (repo, tag) in dead or await store.manifests.find(repo, digest) is None:
                continue
            children = await _children_of(store, digest)
            if children and all((repo, c) in expired_manifests and (repo, c) not in live_manifests for c in children):
                dead.add((repo, tag))
    return expired, dead


async def _unkept_wheels(store: Store, expired_keys: set[str], cutoff: float) -> set[tuple[str, str]]:
    """Tags of wheel artifacts nothing keeps: not uploaded here (any more) and pinned by no
    registered environment version and no cached image (but those expiring in this run), once
    older than the grace period."""
    tags = await store.manifests.tagged(WHEEL_REPOSITORY)
    if not tags:
        return set()
    kept = {wheel.digest for wheel in await store.wheels.all()}
    for version in await store.environments.mentioning("sha256="):
        kept |= wheel_digests(version.definition)
    for image in await store.images.mentioning("sha256="):
        if image.key not in expired_keys and image.canonical is not None:
            kept |= wheel_digests(json.loads(image.canonical))
    dead = set()
    for tag, digest in tags:
        row = await store.manifests.find(WHEEL_REPOSITORY, digest)
        if f"sha256:{tag}" not in kept and (row is None or row.created < cutoff):
            dead.add((WHEEL_REPOSITORY, tag))
    return dead


async def _children_of(store: Store, digest: str) -> list[str]:
    """Child manifests of an index (empty for an image manifest or an unreadable body)."""
    body = await store.files.read(digest)
    try:
        return manifest_refs(body).children if body is not None else []
    except InvalidInput:
        return []


async def _mark(store: Store, manifests: list[ManifestRow], dead_tags: set[tuple[str, str]],
                expired: list[tuple[str, str, str]], cutoff: float) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Reachable manifests as ``(repo, digest)`` and the ``(repo, blob)`` links they need."""
    known = {(m.repository, m.digest): m.created for m in manifests}
    referrers: dict[tuple[str, str], list[str]] = {}
    for m in manifests:
        if m.subject:
            referrers.setdefault((m.repository, m.subject), []).append(m.digest)
    expired_keys = {key for key, _, _ in expired}
    roots = [(r, d) for r, t, d in await store.manifests.roots_for_gc() if (r, t) not in dead_tags]
    roots += [(r, d) for k, r, d in await store.images.roots_for_gc() if k not in expired_keys and r and d]
    # Young manifests are roots too: a manifest pushed by digest waits for its tag.
    roots += [ref for ref, created in known.items() if created >= cutoff]
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
        body = await store.files.read(digest)
        try:
            if body is None:
                raise FileNotFoundError(f"no blob {digest}")
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
