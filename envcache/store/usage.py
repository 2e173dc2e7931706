"""Where the stored bytes go: cached images, build stages, other pushed content, and what gc
would free — the dashboard's storage picture.

The walk is gc's mark (:mod:`envcache.store.gc`: tags and image-index rows are roots; an index
leads to its child manifests, a manifest to its config and layers, a manifest to its referrers),
done once per kind of root so that each blob is counted once, under the first kind that reaches
it: images, then stages, then other tags, then untagged manifests still inside gc's grace
period. A blob nothing reaches is *unreferenced*: gc frees it once it is older than the grace
period (``reclaimable``), and keeps it until then (``young``).

WHY not ``run_gc(dry_run=True)``: a dry run holds the store's transaction (other writers wait)
and reads every manifest body on the event loop in one go. This walk takes no transaction — a
picture a few seconds stale is fine for a chart — reads each manifest body once per daemon
(bodies are immutable by digest: the references are kept in a :class:`ManifestGraph`), and gives
the event loop back every few hundred manifests, so pulls and lookups keep flowing while it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

from envcache.errors import InvalidInput
from envcache.oci import ENV_REPOSITORY, STAGE_REPOSITORY
from envcache.store.references import ManifestRefs, manifest_refs
from envcache.store.store import DEFAULT_GRACE, Store

#: Manifests walked between two yields to the event loop.
_SLICE = 256

KINDS = ("images", "stages", "other", "young", "reclaimable")


@dataclass(frozen=True)
class StorageUsage:
    """Blob bytes (and counts) per kind; every stored blob is in exactly one kind."""

    images: int
    stages: int
    other: int
    young: int
    reclaimable: int
    blobs: dict[str, int]
    computed: float
    seconds: float

    @property
    def total(self) -> int:
        return self.images + self.stages + self.other + self.young + self.reclaimable


class ManifestGraph:
    """What each stored manifest references, read once per digest and kept (a manifest body
    never changes under its digest); entries of manifests that are gone are dropped per walk."""

    def __init__(self) -> None:
        self._refs: dict[str, ManifestRefs] = {}

    async def refs(self, store: Store, digest: str) -> ManifestRefs:
        found = self._refs.get(digest)
        if found is None:
            body = await store.files.read(digest)
            try:
                found = manifest_refs(body) if body is not None else ManifestRefs()
            except InvalidInput:
                found = ManifestRefs()  # unreadable: fsck's business; nothing is reached through it
            self._refs[digest] = found
        return found

    def keep_only(self, digests: Iterable[str]) -> None:
        keep = set(digests)
        self._refs = {d: refs for d, refs in self._refs.items() if d in keep}


async def storage_usage(store: Store, graph: ManifestGraph, *, grace: float = DEFAULT_GRACE,
                        now: float | None = None) -> StorageUsage:
    """Bytes per kind (see the module docstring), from the blob index's sizes."""
    started = time.monotonic()
    now = time.time() if now is None else now
    cutoff = now - grace
    manifests = await store.manifests.all()
    known = {(m.repository, m.digest) for m in manifests}
    referrers: dict[tuple[str, str], list[str]] = {}
    for m in manifests:
        if m.subject:
            referrers.setdefault((m.repository, m.subject), []).append(m.digest)
    tags = await store.manifests.roots_for_gc()
    roots: dict[str, list[tuple[str, str]]] = {
        "images": [(r, d) for _key, r, d in await store.images.roots_for_gc() if r and d]
                  + [(r, d) for r, _t, d in tags if r == ENV_REPOSITORY],
        "stages": [(r, d) for r, _t, d in tags if r == STAGE_REPOSITORY],
        "other": [(r, d) for r, _t, d in tags if r not in (ENV_REPOSITORY, STAGE_REPOSITORY)],
        "young": [(m.repository, m.digest) for m in manifests if max(m.created, m.last_used) >= cutoff],
    }
    owner: dict[str, str] = {}   # blob digest → the first kind that reached it
    seen: set[tuple[str, str]] = set()
    walked = 0
    for kind, starts in roots.items():
        todo = [root for root in starts if root in known]
        while todo:
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            repo, digest = node
            owner.setdefault(digest, kind)
            refs = await graph.refs(store, digest)
            for blob in refs.blobs:
                owner.setdefault(blob, kind)
            todo.extend((repo, child) for child in refs.children if (repo, child) in known)
            todo.extend((repo, r) for r in referrers.get(node, []))
            walked += 1
            if walked % _SLICE == 0:
                await asyncio.sleep(0)
    graph.keep_only(m.digest for m in manifests)
    sizes = dict.fromkeys(KINDS, 0)
    counts = dict.fromkeys(KINDS, 0)
    for row in await store.blobs.all():
        kind = owner.get(row.digest) or ("young" if max(row.created, row.last_access) >= cutoff else "reclaimable")
        sizes[kind] += row.size
        counts[kind] += 1
    return StorageUsage(**sizes, blobs=counts, computed=now, seconds=time.monotonic() - started)
