"""Check a data directory and repair its index from the blob files (the truth).

What is checked, and what ``repair`` does about it:

- every file under ``blobs/`` is re-hashed with the algorithm its path names. A file whose
  content does not match is **quarantined** (moved to ``<data>/quarantine/``, never deleted: it
  may be the only copy of something a person wants to look at) and its rows dropped;
  a file whose name is not a digest at all is quarantined the same way;
- a good file without a ``blobs`` row that a manifest names gets its row back (size from the
  file; media type from the manifests that name it); a row whose size disagrees with the file is
  corrected. A good file without a row that *nothing* names is what a crash between a write's
  steps leaves (its upload was never acknowledged): not a problem, only a note — the next gc
  removes it;
- a ``blobs`` row whose file is gone is dropped, with its ``repository_blobs`` links; a
  manifest whose own body is gone is dropped with its tags (its content is unknowable);
- every stored manifest is re-parsed and its ``repository_blobs`` links restored;
- what cannot be repaired from the files is reported: manifests that name a missing blob
  (re-push the blob or delete the tag), and ``images`` rows over such manifests are dropped on
  repair so the next ``ensure`` rebuilds or pulls the image.

Without ``repair`` nothing is changed. ``problems`` counts what was found; ``unrepaired`` what is
still wrong afterwards (the CLI exits 1 when that is non-zero); ``orphan_files`` are notes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from envcache.errors import InvalidInput
from envcache.store.references import manifest_refs
from envcache.store.records import FileEntry
from envcache.store.store import Store


@dataclass
class FsckReport:
    """Findings of one fsck run; every list holds human-readable items (digests, paths)."""

    repair: bool
    blobs_checked: int = 0
    bytes_checked: int = 0
    corrupt: list[str] = field(default_factory=list)          # digest: content hashes to something else
    stray_files: list[str] = field(default_factory=list)      # files under blobs/ that are no blob
    quarantined: list[str] = field(default_factory=list)      # where they went (repair)
    rows_missing: list[str] = field(default_factory=list)     # good file a manifest names, no blobs row
    orphan_files: list[str] = field(default_factory=list)     # good file nothing names, no row: a crash's leftover
    rows_wrong_size: list[str] = field(default_factory=list)
    files_missing: list[str] = field(default_factory=list)    # blobs row, no file
    manifests_missing: list[str] = field(default_factory=list)  # manifest row whose body is gone
    links_missing: list[str] = field(default_factory=list)    # "repo digest" a manifest needs
    tags_dangling: list[str] = field(default_factory=list)    # "repo:tag" → manifest not stored
    dangling_manifests: list[str] = field(default_factory=list)  # "repo@digest: missing blob X"
    images_dangling: list[str] = field(default_factory=list)  # images keys whose manifest is broken
    unrepaired: int = 0
    seconds: float = 0.0

    @property
    def problems(self) -> int:
        return sum(len(items) for items in (
            self.corrupt, self.stray_files, self.rows_missing, self.rows_wrong_size, self.files_missing,
            self.manifests_missing, self.links_missing, self.tags_dangling, self.dangling_manifests,
            self.images_dangling))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "problems": self.problems}

    def summary(self) -> str:
        """Human text for the CLI: one line per finding, then the verdict."""
        lines = [f"fsck: checked {self.blobs_checked} blobs ({self.bytes_checked} bytes) in {self.seconds:.2f}s"]
        sections = [
            ("corrupt blob (content does not match its digest)", self.corrupt),
            ("stray file under blobs/ (not a blob name)", self.stray_files),
            ("quarantined", self.quarantined),
            ("blob file without index row", self.rows_missing),
            ("blob row with wrong size", self.rows_wrong_size),
            ("blob row whose file is missing", self.files_missing),
            ("manifest whose body is missing", self.manifests_missing),
            ("missing repository link", self.links_missing),
            ("tag pointing at a manifest that is not stored", self.tags_dangling),
            ("manifest naming a missing blob (re-push it or delete the tag)", self.dangling_manifests),
            ("cached image over a broken manifest", self.images_dangling),
        ]
        for title, items in sections:
            lines += [f"  {title}: {item}" for item in items]
        lines += [f"  note: orphan blob file (a crash left it; nothing names it; the next gc removes it): {digest}"
                  for digest in self.orphan_files]
        # Only the files can repair the index: a manifest naming a blob no file holds stays broken.
        unfixable = len(self.dangling_manifests)
        advice = (f"{unfixable} manifest(s) name a blob that no file holds, which --repair cannot fix: re-push "
                  "the blob (or the image), or delete the tag")
        if not self.problems:
            lines.append("fsck: no problems found")
        elif not self.repair:
            fixable = self.problems - unfixable
            steps = [f"run `envcache fsck --repair` to fix {fixable} in the index"] if fixable else []
            lines.append(f"fsck: {self.problems} problem(s) found; " + "; ".join([*steps, *([advice] if unfixable else [])]))
        elif self.unrepaired:
            lines.append(f"fsck: {self.problems} problem(s) found, {self.unrepaired} could not be repaired "
                         f"from the files; {advice}")
        else:
            lines.append(f"fsck: {self.problems} problem(s) found and repaired")
        return "\n".join(lines)


async def run_fsck(store: Store, *, repair: bool = False) -> FsckReport:
    """Check ``store`` (and with ``repair`` fix its index); see the module docstring."""
    started = time.monotonic()
    report = FsckReport(repair=repair)

    # 1. The files: verify each against its name.
    good: dict[str, FileEntry] = {}
    async for entry in store.files.blobs():
        if entry.digest is None:
            report.stray_files.append(entry.key)
            if repair:
                report.quarantined.append(await store.files.quarantine(entry, "stray-" + entry.key.rsplit("/", 1)[-1]))
            continue
        actual, size = await store.files.digest_of(entry)
        report.blobs_checked += 1
        report.bytes_checked += size
        if actual != entry.digest:
            report.corrupt.append(f"{entry.digest} (content hashes to {actual})")
            if repair:
                report.quarantined.append(await store.files.quarantine(entry, entry.digest.replace(":", "-")))
            continue
        good[entry.digest] = entry

    # 2. The manifests: which blobs they need (and with what media type), which are broken.
    media_types: dict[str, str] = {}
    manifests = await store.manifests.all()
    needs: dict[tuple[str, str], list[str]] = {}
    lost: list[tuple[str, str]] = []
    for m in manifests:
        media_types.setdefault(m.digest, m.media_type)
        if m.digest not in good:
            lost.append((m.repository, m.digest))
            report.manifests_missing.append(f"{m.repository}@{m.digest}")
            continue
        try:
            refs = manifest_refs(await store.files.read(m.digest) or b"")
        except InvalidInput:
            continue  # the bytes match the digest, so this is what was pushed: nothing to repair
        needs[(m.repository, m.digest)] = refs.blobs
        for blob, blob_type in refs.media_types.items():
            media_types.setdefault(blob, blob_type)
    lost_set = set(lost)

    # 3. The blob rows against the good files.
    rows = {row.digest: row.size for row in await store.blobs.all()}
    named = {m.digest for m in manifests} | {blob for blobs in needs.values() for blob in blobs}
    unindexed = sorted(d for d in good if d not in rows)
    report.rows_missing = [d for d in unindexed if d in named]
    report.orphan_files = [d for d in unindexed if d not in named]
    report.rows_wrong_size = sorted(f"{d} (row says {rows[d]}, file has {good[d].size})"
                                    for d in good if d in rows and rows[d] != good[d].size)
    gone = sorted(d for d in rows if d not in good)
    corrupt = {item.split(" ", 1)[0] for item in report.corrupt}
    report.files_missing = sorted(d for d in gone if d not in corrupt)

    # 4. Links every intact manifest needs, dangling references, dangling tags and images.
    links = {(r, d) for r, d, _ in await store.blobs.links()}
    missing_links: list[tuple[str, str]] = []
    broken = set(lost_set)
    for (repo, digest), blobs in sorted(needs.items()):
        for blob in [digest, *blobs]:
            if blob in good and (repo, blob) not in links:
                missing_links.append((repo, blob))
        absent = [b for b in blobs if b not in good]
        if absent:
            broken.add((repo, digest))
            report.dangling_manifests.append(f"{repo}@{digest}: missing blob {', '.join(absent)}")
    report.links_missing = [f"{r} {d}" for r, d in missing_links]
    stored = {(m.repository, m.digest) for m in manifests}
    dangling_tags = [(r, t, d) for r, t, d in await store.manifests.roots_for_gc()
                     if (r, d) not in stored or (r, d) in lost_set]
    report.tags_dangling = [f"{r}:{t}" for r, t, _ in dangling_tags]
    images_broken = sorted(key for key, repo, digest in await store.images.roots_for_gc()
                           if (repo, digest) in broken or (repo, digest) not in stored)
    report.images_dangling = images_broken

    if repair:
        async with store.transaction():
            for digest in report.rows_missing:
                await store.blobs.restore(digest, good[digest].size, media_types.get(digest), good[digest].modified)
            for digest, entry in good.items():
                if digest in rows and rows[digest] != entry.size:
                    await store.blobs.set_size(digest, entry.size)
            await store.blobs.forget(gone)
            await store.manifests.delete_many(lost)
            await store.manifests.delete_tags(dangling_tags)
            for repo, blob in missing_links:
                await store.blobs.link(repo, [blob])
            await store.images.delete(images_broken)
        # Only a manifest naming a blob that no file holds cannot be fixed from the files.
        report.unrepaired = len(report.dangling_manifests)
    else:
        report.unrepaired = report.problems
    report.seconds = time.monotonic() - started
    return report
