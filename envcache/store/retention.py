"""gc's size cap: which cached images to evict, least recently used first, to bring the store
under ``max_bytes`` (bazel-remote's and zot's promise: the cache never grows past its cap for
longer than one gc interval).

Eviction only *chooses* images; gc then expires them exactly like ``--keep-days`` does (their
rows and tags go in one transaction before the mark, conditionally: an image used meanwhile
stays), and the same run's mark and sweep remove their now-unreferenced stages and blobs — so
gc's guarantees (generation-checked deletes, a blob read within the grace period never deleted
from under a client) hold for evictions too.

What may go: images not pinned, not used within the grace period, and not built from the latest
version of a registered environment (for any variant). What an eviction frees is projected
from the manifests: a blob goes once no root that stays reaches it — another image, a tag
pushed through ``/v2/``, an index over variants (kept while one of its variants stays), a stage
still contained in an image that stays. A blob only evicted images reach counts as freed even
when it was read within the grace period (a client pulling it keeps it until the next run).
A stage image (``envcache/stage:<chain key>``) goes with the last evicted image that contains
all its layers; a stage no image contains (a failed build's, kept to speed up its retry) is not
this module's to remove.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from envcache.definition import VARIANTS, definition_from_dict, for_variant, spec_hash
from envcache.errors import EnvcacheError
from envcache.oci import ENV_REPOSITORY, STAGE_REPOSITORY
from envcache.store.records import BlobRow, StoredImage
from envcache.store.store import Store
from envcache.store.usage import ManifestGraph

#: (repository, tag, manifest digest)
Tag = tuple[str, str, str]


@dataclass(frozen=True)
class Eviction:
    """One evicted image, as the gc report lists it."""

    key: str
    bytes: int        # what evicting it frees (blobs no image or tag that stays reaches)
    last_used: float
    reason: str


@dataclass
class EvictionPlan:
    """The images to evict in order, the stage tags that go with them, and the sizes."""

    store_bytes: int                  # blob bytes now
    projected_bytes: int              # after this run's sweep, if every eviction goes through
    evictions: list[Eviction] = field(default_factory=list)
    stage_tags: dict[Tag, set[str]] = field(default_factory=dict)  # stage tag → evicted images containing it


@dataclass
class _Unit:
    """Something that keeps blobs alive until every image in ``until`` is evicted."""

    blobs: set[str]
    until: set[str]


async def plan_evictions(store: Store, max_bytes: int, rows: list[BlobRow], cutoff: float,
                         expiring: Iterable[str] = ()) -> EvictionPlan:
    """Evict least recently used images until the projected store is at most ``max_bytes``.

    ``rows``: the blob index now (sizes, use times); ``expiring``: images ``--keep-days`` expires
    in this run anyway (counted as gone, never listed as evictions)."""
    plan = EvictionPlan(store_bytes=sum(row.size for row in rows), projected_bytes=0)
    gone = set(expiring)
    latest = await _registered_latest(store)
    candidates = [image for image in await store.images.evictable(cutoff)
                  if image.key not in gone and image.spec_hash not in latest]
    graph = ManifestGraph()
    reach = {image.key: await _reach(store, graph, image.manifest_digest) for image in candidates}
    by_manifest: dict[tuple[str, str], set[str]] = {}
    for image in candidates:
        by_manifest.setdefault((image.repository, image.manifest_digest), set()).add(image.key)
    # Blobs that stay whatever is evicted: what every other root reaches.
    fixed: set[str] = set()
    staying = []
    for key, _repo, _tag, digest in await store.images.all_tags():
        if key not in reach and key not in gone and digest:
            staying.append(await _reach(store, graph, digest))
            fixed |= staying[-1]
    for _repo, digest in await store.images.kept_history(float("-inf")):  # gc keeps them (--keep-days expires them)
        fixed |= await _reach(store, graph, digest)
    units: list[_Unit] = [_Unit(reach[image.key], {image.key}) for image in candidates]
    for repo, tag, digest in await store.manifests.roots_for_gc():
        if (repo, digest) in by_manifest:  # an evictable image's own tag goes with it
            continue
        refs = await graph.refs(store, digest)
        tree = await _reach(store, graph, digest)
        if repo == ENV_REPOSITORY and refs.children and all((repo, c) in by_manifest for c in refs.children):
            units.append(_Unit(tree, {key for c in refs.children for key in by_manifest[(repo, c)]}))
            continue  # an index over variants goes with its last variant
        layers = set(refs.layers)
        holders = {key for key, blobs in reach.items() if layers <= blobs}
        if repo == STAGE_REPOSITORY and layers and holders and not any(layers <= blobs for blobs in staying):
            plan.stage_tags[(repo, tag, digest)] = holders
            units.append(_Unit(tree, holders))
            continue  # a stage goes with the last image that contains it
        fixed |= tree
    await asyncio.to_thread(_choose, plan, candidates, units, fixed, rows, cutoff, max_bytes)
    return plan


def _choose(plan: EvictionPlan, candidates: list[StoredImage], units: list[_Unit], fixed: set[str],
            rows: list[BlobRow], cutoff: float, max_bytes: int) -> None:
    """Evict from ``candidates`` (least recently used first) until the projection fits (pure: runs
    on a worker thread, so a large store's counting never holds up requests)."""
    sizes = {row.digest: row.size for row in rows}
    # Young blobs nothing evictable reaches stay too (an upload whose manifest is still to come).
    # A young blob an evicted image reaches is counted as freed: it goes in the first run after
    # the grace period (a client pulling that image right now keeps it until then).
    fixed |= {row.digest for row in rows if max(row.created, row.last_access) >= cutoff} - set().union(
        *(unit.blobs for unit in units))
    refcount: dict[str, int] = {}
    for unit in units:
        for digest in unit.blobs - fixed:
            refcount[digest] = refcount.get(digest, 0) + 1
    # What nothing reaches (and is older than the grace period) goes in this run anyway.
    plan.projected_bytes = sum(size for digest, size in sizes.items() if digest in fixed or digest in refcount)
    reason = f"least recently used; the store holds {plan.store_bytes} bytes, max_bytes is {max_bytes}"
    for image in candidates:
        if plan.projected_bytes <= max_bytes:
            break
        freed = 0
        for unit in units:
            if image.key in unit.until:
                unit.until.discard(image.key)
                if not unit.until:
                    for digest in unit.blobs - fixed:
                        refcount[digest] -= 1
                        freed += sizes.get(digest, 0) if refcount[digest] == 0 else 0
        plan.projected_bytes -= freed
        plan.evictions.append(Eviction(image.key, freed, image.last_used, reason))
    evicted = {eviction.key for eviction in plan.evictions}
    plan.stage_tags = {tag: holders for tag, holders in plan.stage_tags.items() if holders <= evicted}


async def _registered_latest(store: Store) -> set[str]:
    """Spec hashes (per variant, as images are filed) of every registered environment's latest version."""
    hashes: set[str] = set()
    for version in await store.environments.latest():
        try:
            definition = definition_from_dict(version.definition, source=f"environment {version.name}")
        except EnvcacheError:
            continue  # a stored definition this envcache cannot read builds nothing here either
        hashes |= {spec_hash(for_variant(definition, variant)) for variant in VARIANTS}
    return hashes


async def _reach(store: Store, graph: ManifestGraph, digest: str) -> set[str]:
    """Digests of the manifest, an index's children and every blob they name."""
    seen: set[str] = set()
    todo = [digest]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            refs = await graph.refs(store, node)
            seen.update(refs.blobs)
            todo.extend(refs.children)
    return seen
