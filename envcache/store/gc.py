"""Garbage collection of a data directory: mark from the roots, sweep what nothing reaches.

Roots are every tag (``envcache/env:*`` images, ``envcache/stage:*`` stage images, anything
pushed through ``/v2/``) and every ``images`` row. From a root manifest the mark follows index
→ child manifests, manifest → config + layers, and referrers (manifests whose ``subject`` is a
reachable manifest). Everything else — untagged manifests, blobs no reachable manifest names,
idle upload sessions, stale temp files — is removed once it is older than the grace period.

WHY a grace period: a blob that was just uploaded is unreferenced until its manifest arrives
(seconds later, or an hour later for a slow client), and a manifest pushed by digest is untagged
until its tag follows. Anything used within ``grace`` seconds (created, pushed again, mounted,
named by a manifest, tagged, or read) survives.

WHY no lock during the mark, and conditional deletes (issue 13: gc deleted a blob an upload had
just acknowledged): the mark runs while the registry keeps serving and writing. It reads what is
used (blob rows, with their generations; manifest rows) before what references it (tags,
images, links), so a reference created meanwhile shows as a changed generation. The sweep then
runs in small transactions that delete a row only if its generation is still the marked one and
it is still unused since the cutoff; blob files go last, each only after re-checking under the
store's write lock that no row names it — the lock every upload holds while it publishes its
bytes and records them. The rules are written down in :mod:`envcache.store.interfaces`. A crash
in between leaves files without rows (harmless; the next gc removes them), never rows without
files. The heavy parts — listing and planning over every file — run on a worker thread, and the
sweep yields between batches, so requests keep being answered while gc runs.

gc reads every repository through its interface (``roots_for_gc`` of tags and of the image
index, the blob rows and links, the layer map) and never another layer's tables.

Wheel artifacts (``envcache/wheel:<sha256 hex>``) are tagged like any artifact, but the tag of a
wheel that is not an uploaded wheel (removed with ``wheels rm``, or pulled for a build) only
lives while a registered environment or a cached image pins the wheel: once nothing does and the
grace period has passed, the tag goes and the same run sweeps the wheel.

``--keep-days N`` first expires ``images`` rows unused for N days (``last_used``) and deletes
their tags, so the same run sweeps them; images a refresh replaced more than N days ago leave
their key's history (until then, history entries are roots too). An index tag over variants (``envcache/env:<spec
hash>``) goes too once every image it lists has expired; while a sibling variant is still in use
the index keeps the expired one reachable (reported in ``notes``) until the next rebuild
replaces that entry. ``max_bytes`` is another way to choose which images expire: the least
recently used ones until the store fits (:mod:`envcache.store.retention` chooses them, and the
stages only they contained); from there on they go exactly the same way. Pinned images never
expire.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from envcache.definition.canonical import wheel_digests
from envcache.errors import EnvcacheError, InvalidInput
from envcache.oci import WHEEL_REPOSITORY
from envcache.store.records import BlobRow, FileEntry, ManifestRow
from envcache.store.references import manifest_refs
from envcache.store.retention import Eviction, plan_evictions
from envcache.store.store import DEFAULT_GRACE as DEFAULT_GRACE  # defined beside the store, so usage shares it
from envcache.store.store import Busy, Store
from envcache.wire import STEP_REPOSITORY

DEFAULT_UPLOAD_TTL = 3600.0
#: Rows per sweep transaction: short enough that writers waiting for the lock barely notice.
SWEEP_BATCH = 500

T = TypeVar("T")


class GcAborted(EnvcacheError):
    """GC cannot run safely: a manifest in use is unreadable, or another process owns the store."""

    http_status = 409  # the store's state, not the request, is what is wrong


@dataclass
class GcReport:
    """What a GC run removed (or, with ``dry_run``, would remove)."""

    dry_run: bool
    grace_seconds: float
    keep_days: float | None
    max_bytes: int | None = None
    store_bytes: int = 0  # blob bytes when gc started (what max_bytes caps)
    images_expired: list[str] = field(default_factory=list)
    evicted: list[dict[str, Any]] = field(default_factory=list)  # {key, bytes, last_used, reason}
    steps_expired: list[str] = field(default_factory=list)  # pipeline step keys
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
            *([f"  images evicted:     {len(self.evicted)} (store {_human(self.store_bytes)}, "
               f"max_bytes {_human(self.max_bytes)})"] if self.max_bytes is not None else []),
            *(f"    {e['key']}: {_human(e['bytes'])}, last used {time.strftime('%Y-%m-%d %H:%M', time.localtime(e['last_used']))}"
              for e in self.evicted),
            f"  steps expired:      {len(self.steps_expired)}",
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
                 max_bytes: int | None = None, grace: float = DEFAULT_GRACE, upload_ttl: float = DEFAULT_UPLOAD_TTL,
                 upload_busy: Busy | None = None, now: float | None = None,
                 phase: Callable[[str], None] = lambda text: None) -> GcReport:
    """Mark and sweep ``store``; returns what was (or would be) removed. One run at a time.

    ``upload_busy(id)`` tells the daemon's in-flight upload sessions apart so an idle-looking
    session that is receiving bytes right now is kept. ``phase`` hears each phase as it starts
    (``envcache gc`` prints them: a big store takes a while). ``max_bytes``: evict least
    recently used images first until the store fits (:mod:`envcache.store.retention`).
    """
    if keep_days is not None and keep_days < 0:
        raise InvalidInput(f"keep_days must be 0 or more, not {keep_days}")
    if max_bytes is not None and max_bytes < 0:
        raise InvalidInput(f"max_bytes must be 0 or more, not {max_bytes}")
    if grace < 0:
        raise InvalidInput(f"grace must be 0 or more seconds, not {grace}")
    async with store.gc_lock:
        started = time.monotonic()
        report = GcReport(dry_run=dry_run, grace_seconds=grace, keep_days=keep_days, max_bytes=max_bytes)
        if not dry_run:
            await store.files.release_reserve()  # room for the index's log on a full disk
        await _collect(store, report, time.time() if now is None else now, upload_ttl, upload_busy, phase)
        if not dry_run:
            await store.files.restore_reserve(store.min_free_bytes)
        report.bytes_freed = report.blob_bytes_freed + report.upload_bytes_freed + report.tmp_bytes_freed
        report.seconds = time.monotonic() - started
        return report


@dataclass
class _Plan:
    """What the mark found dead, with the generations the sweep must still see."""

    manifests: list[tuple[str, str, int]] = field(default_factory=list)  # (repository, digest, gen)
    rows: list[tuple[str, int]] = field(default_factory=list)            # (digest, gen) of dead blob rows
    orphans: list[str] = field(default_factory=list)                     # old files no row names
    links: list[tuple[str, str, float]] = field(default_factory=list)    # stale (repository, digest, linked)
    layers: list[str] = field(default_factory=list)                      # layer-map rows over missing blobs


async def _collect(store: Store, report: GcReport, now: float, upload_ttl: float, upload_busy: Busy | None,
                   phase: Callable[[str], None]) -> None:
    cutoff = now - report.grace_seconds
    await store.flush_reads()
    # Images unused for keep_days go first, with their tags, so the mark sees them gone.
    expired, dead_tags = await _expire_images(store, report, now)
    # The mark: what is used first (blob rows, then manifests), then what references it.
    rows = await store.blobs.all()
    manifests = await store.manifests.all()
    # An image a refresh replaced stays (pullable by digest) until --keep-days expires it.
    history_cutoff = now - report.keep_days * 86400 if report.keep_days is not None else float("-inf")
    phase(f"gc: marking what {len(manifests)} manifests reach")
    reachable, needed = await _mark(store, manifests, {(r, t) for r, t, _ in dead_tags}, expired, cutoff,
                                    history_cutoff)
    for repo, digest in sorted({(r, d) for _, r, d in expired} & reachable):
        report.notes.append(f"expired image manifest {repo}@{digest} is still referenced (by an index or "
                            "another tag), so it stays")
    phase("gc: listing blobs (files and index)")
    links = await store.blobs.links()
    layers = await store.layers.blob_digests()
    files = [entry async for entry in store.files.blobs()]
    plan = await asyncio.to_thread(_plan, report, rows, manifests, reachable, needed, links, layers, files, cutoff)
    temps = [entry for entry in await store.files.temp_entries() if entry.modified < cutoff]

    if report.dry_run:
        report.tmp_files_deleted = len(temps)
        report.tmp_bytes_freed = sum(entry.size for entry in temps)
    else:
        phase(f"gc: deleting {len(plan.rows) + len(plan.orphans)} blob file(s)")
        await _sweep(store, report, plan, cutoff, files)
        for entry in temps:
            if await store.files.remove_temp(entry.key, cutoff):
                report.tmp_files_deleted += 1
                report.tmp_bytes_freed += entry.size

    # Upload sessions idle past their TTL (not one receiving bytes right now), then orphan data.
    phase("gc: expiring idle uploads")
    expired_uploads = await store.expire_uploads(upload_ttl, upload_busy, now=now, dry_run=report.dry_run)
    report.uploads_expired = len(expired_uploads)
    report.upload_bytes_freed = sum(entry.size for entry in expired_uploads)
    sessions = {session.id for session in await store.uploads.all()}
    for entry in await store.spool.upload_entries():
        if entry.key not in sessions and entry.modified < cutoff and \
                (report.dry_run or await store.spool.remove_upload_leftover(entry.key, cutoff)):
            report.upload_bytes_freed += entry.size
    if not report.dry_run:
        report.repositories_deleted = await store.manifests.drop_empty_repositories(cutoff)


def _plan(report: GcReport, rows: list[BlobRow], manifests: list[ManifestRow], reachable: set[tuple[str, str]],
          needed: set[tuple[str, str]], links: list[tuple[str, str, float]], layers: list[str],
          files: list[FileEntry], cutoff: float) -> _Plan:
    """Everything dead, from the mark's snapshot (pure: runs on a worker thread). The report
    gets the predicted counts; the sweep corrects them to what it really removed."""
    plan = _Plan()
    plan.manifests = [(m.repository, m.digest, m.gen) for m in manifests
                      if (m.repository, m.digest) not in reachable and max(m.created, m.last_used) < cutoff]
    report.manifests_deleted = len(plan.manifests)
    reachable_blobs = {digest for _, digest in needed}
    by_digest = {row.digest: row for row in rows}
    on_disk = {entry.digest: entry for entry in files if entry.digest is not None}
    for digest in sorted(set(by_digest) | set(on_disk)):
        row, entry = by_digest.get(digest), on_disk.get(digest)
        if digest in reachable_blobs:
            report.blobs_kept += 1
            continue
        if max(row.created if row else 0.0, row.last_access if row else 0.0, entry.modified if entry else 0.0) >= cutoff:
            report.blobs_kept += 1
            report.blobs_kept_young += 1
            continue
        if row is not None:
            plan.rows.append((digest, row.gen))
        else:
            plan.orphans.append(digest)
        report.blobs_deleted += 1
        report.blob_bytes_freed += entry.size if entry else 0
    dead = {digest for digest, _ in plan.rows}
    plan.links = [(r, d, linked) for r, d, linked in links
                  if d not in dead and (r, d) not in needed and linked < cutoff]
    report.links_pruned = len(plan.links)
    plan.layers = sorted({d for d in layers if d in dead or (d not in by_digest and d not in on_disk)})
    report.layer_rows_deleted = len(plan.layers)
    return plan


async def _sweep(store: Store, report: GcReport, plan: _Plan, cutoff: float, files: list[FileEntry]) -> None:
    """Delete what the plan found, each row only if still unused (interfaces, rule 2), in short
    transactions; blob files last, each only if no row names it now (rule 3)."""
    report.manifests_deleted = sum(map(len, await _batched(
        plan.manifests, lambda batch: store.manifests.delete_unused(batch, cutoff), store)))
    forgotten = [d for batch in await _batched(plan.rows, lambda batch: store.blobs.forget_unused(batch, cutoff), store)
                 for d in batch]
    report.links_pruned = sum(await _batched(plan.links, lambda batch: store.blobs.unlink_unused(batch, cutoff), store))
    # Layer-map rows over blobs just forgotten, or over blobs that had neither row nor file.
    gone, planned = set(forgotten), {digest for digest, _ in plan.rows}
    await _batched([d for d in plan.layers if d in gone or d not in planned], store.layers.forget_blobs, store)
    sizes = {entry.digest: entry.size for entry in files if entry.digest is not None}
    deleted = [d for batch in await _batched([*forgotten, *plan.orphans], lambda b: _delete_files(store, b), store)
               for d in batch]
    report.blobs_deleted = len(set(forgotten) | set(deleted))
    report.blob_bytes_freed = sum(sizes.get(d, 0) for d in deleted)


async def _delete_files(store: Store, digests: Sequence[str]) -> list[str]:
    """Inside the transaction: delete the files of those ``digests`` no row names any more."""
    named = await store.blobs.known(digests)
    return await store.files.delete([digest for digest in digests if digest not in named])


async def _batched(items: Sequence[Any], step: Callable[[Sequence[Any]], Awaitable[T]], store: Store) -> list[T]:
    """``step`` over ``items`` in SWEEP_BATCH slices, one transaction each, yielding in between."""
    results = []
    for start in range(0, len(items), SWEEP_BATCH):
        async with store.transaction():
            results.append(await step(items[start:start + SWEEP_BATCH]))
        await asyncio.sleep(0)
    return results


async def _expire_images(store: Store, report: GcReport,
                         now: float) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """``--keep-days`` and ``max_bytes``: forget image-index entries still unused for that long,
    and those the size cap evicts (least recently used first); with them, delete the
    (repository, tag, digest) tags that go with them (stages only the evicted images contained
    included) and the tags of wheel artifacts nothing keeps any more — one transaction, before
    the mark, so an image or wheel used meanwhile keeps its row and its tags. Which images to
    evict is planned before it (reading manifests), so writers are not kept waiting. A dry run
    only computes them."""
    cutoff = now - report.grace_seconds
    limit = None if report.keep_days is None else now - report.keep_days * 86400
    aging = [] if limit is None else await store.images.unused_since(limit)
    evictions: dict[str, Eviction] = {}
    stage_tags: dict[tuple[str, str, str], set[str]] = {}
    if report.max_bytes is not None:
        plan = await plan_evictions(store, report.max_bytes, await store.blobs.all(), cutoff,
                                    [key for key, _, _ in aging])
        report.store_bytes = plan.store_bytes
        evictions, stage_tags = {e.key: e for e in plan.evictions}, plan.stage_tags
        if plan.projected_bytes > report.max_bytes:
            report.notes.append(
                f"the store stays over max_bytes ({plan.projected_bytes} > {report.max_bytes} bytes after this run): "
                "the rest is pinned, a registered environment's latest version, used within the grace period, "
                "or not a cached image")
    expired: list[tuple[str, str, str]] = []
    dead: list[tuple[str, str, str]] = []
    steps: list[tuple[str, str]] = []
    async with store.transaction(write=not report.dry_run):
        images = await store.images.all_tags()
        chosen = {key: (repo, digest) for key, repo, _, digest in images if key in evictions}
        expired = aging + [(key, repo, digest) for key, (repo, digest) in chosen.items()]
        if expired and not report.dry_run:
            gone = set(await store.images.delete_unused([key for key, _, _ in aging], limit)) if aging else set()
            gone |= set(await store.images.delete_unused(list(chosen), cutoff))
            expired = [entry for entry in expired if entry[0] in gone]
        expired_keys = {key for key, _, _ in expired}
        dead = await _dead_tags(store, images, expired)
        dead += [tag for tag, holders in stage_tags.items() if holders <= expired_keys]
        dead += await _unkept_wheels(store, expired_keys, cutoff)
        if limit is not None and not report.dry_run and (forgotten := await store.images.forget_history(limit)):
            report.notes.append(f"{forgotten} image(s) replaced by a refresh more than {report.keep_days:g} "
                                "days ago expired from their keys' history")
        if limit is not None:
            # Pipeline step results follow the same rule: unused that long, their tag goes.
            steps = await store.steps.unused_since(limit)
            if steps and not report.dry_run:
                dropped = set(await store.steps.delete_unused([key for key, _ in steps], limit))
                steps = [(key, digest) for key, digest in steps if key in dropped]
            dead += [(STEP_REPOSITORY, key, digest) for key, digest in steps]
        if dead and not report.dry_run:
            await store.manifests.delete_tags(dead)
    report.images_expired = [key for key, _, _ in expired if key not in evictions]
    report.evicted = [asdict(eviction) for key, eviction in evictions.items() if key in expired_keys]
    report.steps_expired = [key for key, _ in steps]
    report.tags_deleted = sorted(f"{r}:{t}" for r, t, _ in dead)
    return expired, dead


async def _dead_tags(store: Store, images: list[tuple[str, str, str, str]],
                     expired: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The tags of the ``expired`` images (``images``: every row as (key, repository, tag,
    digest)) that no live image shares, and the index tags whose every listed image expired."""
    if not expired:
        return []
    expired_keys = {key for key, _, _ in expired}
    live = [row for row in images if row[0] not in expired_keys]
    live_tags = {(r, t) for _, r, t, _ in live}
    live_manifests = {(r, d) for _, r, _, d in live}
    dead = {(repo, tag, digest) for key, repo, tag, digest in images
            if key in expired_keys and tag and (repo, tag) not in live_tags}
    # Index tags (envcache/env:<spec hash>) whose every listed image has expired.
    expired_manifests = {(r, d) for _, r, d in expired}
    dead_pairs = {(r, t) for r, t, _ in dead}
    for repo in sorted({r for _, r, _ in expired if r}):
        for tag, digest in await store.manifests.tagged(repo):
            if (repo, tag) in dead_pairs or await store.manifests.find(repo, digest) is None:
                continue
            children = await _children_of(store, digest)
            if children and all((repo, c) in expired_manifests and (repo, c) not in live_manifests for c in children):
                dead.add((repo, tag, digest))
    return sorted(dead)


async def _unkept_wheels(store: Store, expired_keys: set[str], cutoff: float) -> list[tuple[str, str, str]]:
    """Tags of wheel artifacts nothing keeps: not uploaded here (any more) and pinned by no
    registered environment version and no cached image (but those expiring in this run), once
    older than the grace period."""
    tags = await store.manifests.tagged(WHEEL_REPOSITORY)
    if not tags:
        return []
    kept = {wheel.digest for wheel in await store.wheels.all()}
    for version in await store.environments.mentioning("sha256="):
        kept |= wheel_digests(version.definition)
    for image in await store.images.mentioning("sha256="):
        if image.key not in expired_keys and image.canonical is not None:
            kept |= wheel_digests(json.loads(image.canonical))
    dead = []
    for tag, digest in tags:
        row = await store.manifests.find(WHEEL_REPOSITORY, digest)
        if f"sha256:{tag}" not in kept and (row is None or max(row.created, row.last_used) < cutoff):
            dead.append((WHEEL_REPOSITORY, tag, digest))
    return dead


async def _children_of(store: Store, digest: str) -> list[str]:
    """Child manifests of an index (empty for an image manifest or an unreadable body)."""
    body = await store.files.read(digest)
    try:
        return manifest_refs(body).children if body is not None else []
    except InvalidInput:
        return []


async def _mark(store: Store, manifests: list[ManifestRow], dead_tags: set[tuple[str, str]],
                expired: list[tuple[str, str, str]], cutoff: float,
                history_cutoff: float) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Reachable manifests as ``(repo, digest)`` and the ``(repo, blob)`` links they need."""
    known = {(m.repository, m.digest): max(m.created, m.last_used) for m in manifests}
    referrers: dict[tuple[str, str], list[str]] = {}
    for m in manifests:
        if m.subject:
            referrers.setdefault((m.repository, m.subject), []).append(m.digest)
    expired_keys = {key for key, _, _ in expired}
    roots = [(r, d) for r, t, d in await store.manifests.roots_for_gc() if (r, t) not in dead_tags]
    roots += [(r, d) for k, r, d in await store.images.roots_for_gc() if k not in expired_keys and r and d]
    roots += await store.images.kept_history(history_cutoff)   # replaced by a refresh, not expired yet
    # Young manifests are roots too: a manifest pushed by digest waits for its tag.
    roots += [ref for ref, used in known.items() if used >= cutoff]
    reachable: set[tuple[str, str]] = set()
    links: set[tuple[str, str]] = set()
    todo = [root for root in roots if root in known]
    while todo:
        node = todo.pop()
        if node in reachable:
            continue
        reachable.add(node)
        if len(reachable) % SWEEP_BATCH == 0:
            await asyncio.sleep(0)  # many images: let requests in between the reads
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
