"""Copy images between an upstream registry and the local store.

Pull order is bottom-up: blobs first (each verified by digest as it streams into the store),
then the per-platform manifests by digest, and the tag last. The tag is the only thing other
code looks up, so an interrupted or lying upstream can leave at most some verified, unreferenced
blobs (collected by GC) — never a tag pointing at something incomplete or unverified.

Push order is the same, so a registry never sees a manifest whose blobs it lacks: blobs (HEAD
first, then a cross-repository mount from a sibling repository, then an upload), manifests, and
the index under its tag.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from envcache.errors import InvalidInput
from envcache.oci import INDEX_TYPES, Descriptor, parse_manifest
from envcache.upstream.client import RegistryClient, RemoteManifest, UpstreamError

if TYPE_CHECKING:
    from envcache.store import Store


@dataclass
class CopyStats:
    """What a copy moved; pull-vs-build benchmarks and ``envcache pull`` report it."""

    manifests: int = 0
    blobs_copied: int = 0
    blobs_skipped: int = 0     # already present on the destination (or mounted)
    blobs_mounted: int = 0
    bytes_copied: int = 0
    digest: str = ""
    media_type: str = ""
    size: int = 0              # sum of the image's config + layer sizes (all platforms)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parsed(body: bytes, where: str) -> tuple[list[Descriptor], list[Descriptor]]:
    """(child manifests, blobs) named by a manifest document, every descriptor with a size:
    nothing a registry sends is trusted further than that."""
    manifest = parse_manifest(body)
    manifest.check_sizes(where)
    return list(manifest.manifests), [d for d in (manifest.config, *manifest.layers) if d is not None]


async def pull_image(client: RegistryClient, remote_repo: str, ref: str, store: Store,
                     local_repo: str, local_tag: str | None = None) -> CopyStats | None:
    """Copy ``remote_repo:ref`` into ``store`` as ``local_repo:local_tag``; ``None`` if absent upstream."""
    top = await client.get_manifest(remote_repo, ref)
    if top is None:
        return None
    stats = CopyStats(digest=top.digest, media_type=top.media_type)
    todo: list[RemoteManifest] = [top]
    ordered: list[RemoteManifest] = []
    while todo:
        manifest = todo.pop()
        ordered.append(manifest)
        try:
            children, blobs = _parsed(manifest.body, f"{remote_repo}@{manifest.digest}")
        except InvalidInput as exc:
            raise UpstreamError(f"upstream {client.upstream.url}: {exc}") from exc
        if manifest.media_type not in INDEX_TYPES and children:
            raise UpstreamError(f"upstream {client.upstream.url}: {manifest.digest} is an image manifest with children")
        for child in children:
            if await store.get_manifest(local_repo, child.digest) is not None:
                stats.notes.append(f"manifest {child.digest} already local")
                stats.size += await image_size(store, local_repo, child.digest)
                continue
            fetched = await client.get_manifest(remote_repo, child.digest)
            if fetched is None:
                raise UpstreamError(f"upstream {client.upstream.url}: index {manifest.digest} names "
                                    f"{child.digest}, which is missing")
            todo.append(fetched)
        for blob in blobs:
            size = blob.size or 0
            stats.size += size
            if await store.has_blob(blob.digest):
                stats.blobs_skipped += 1
                continue
            _, chunks = await client.blob_stream(remote_repo, blob.digest, size)
            try:
                await store.write_blob(chunks, expected_digest=blob.digest, expected_size=size,
                                       media_type=blob.media_type)
            except InvalidInput as exc:   # digest or size mismatch: the store kept nothing
                raise UpstreamError(f"upstream {client.upstream.url}: blob {blob.digest} "
                                    f"failed verification: {exc}") from exc
            finally:
                await chunks.aclose()
            stats.blobs_copied += 1
            stats.bytes_copied += size
    # Children before parents: the tag (on the top manifest) goes in last.
    for manifest in reversed(ordered):
        is_top = manifest is top
        await store.put_manifest(local_repo, manifest.digest, manifest.body, manifest.media_type)
        stats.manifests += 1
        if is_top and local_tag:
            await store.set_tag(local_repo, local_tag, manifest.digest)
    return stats


async def push_image(client: RegistryClient, store: Store, local_repo: str, ref: str, remote_repo: str,
                     remote_tag: str | None = None, mount_from: tuple[str, ...] = ()) -> CopyStats:
    """Push ``local_repo:ref`` from ``store`` to ``remote_repo:remote_tag`` (or by digest)."""
    top = await store.get_manifest(local_repo, ref)
    if top is None:
        raise InvalidInput(f"{local_repo}:{ref} is not in the local store")
    stats = CopyStats(digest=top.digest, media_type=top.media_type)
    await _push_manifest(client, store, local_repo, top.digest, top.media_type, top.body,
                         remote_repo, remote_tag or top.digest, mount_from, stats)
    return stats


async def _push_manifest(client: RegistryClient, store: Store, local_repo: str, digest: str, media_type: str,
                         body: bytes, remote_repo: str, remote_ref: str, mount_from: tuple[str, ...],
                         stats: CopyStats) -> None:
    children, blobs = _parsed(body, f"{local_repo}@{digest}")
    for child in children:
        local = await store.get_manifest(local_repo, child.digest)
        if local is None:
            raise InvalidInput(f"{local_repo}@{digest} names {child.digest}, which is not in the local store")
        await _push_manifest(client, store, local_repo, local.digest, local.media_type, local.body,
                             remote_repo, local.digest, mount_from, stats)
    for blob in blobs:
        d = blob.digest
        stats.size += blob.size or 0
        if await client.blob_exists(remote_repo, d):
            stats.blobs_skipped += 1
            continue
        path = store.files.local_path(d)
        if path is None or not await store.has_blob(d):
            raise InvalidInput(f"blob {d} of {local_repo}@{digest} is not in the local store")
        mounted, session = False, None
        for source in mount_from:
            if source != remote_repo:
                mounted, session = await client.mount_blob(remote_repo, d, source)
                if mounted or session is not None:
                    break
        if mounted:
            stats.blobs_mounted += 1
            continue
        # A refused mount already opened an upload session: upload into it.
        await client.upload_blob(remote_repo, d, path, session)
        stats.blobs_copied += 1
        stats.bytes_copied += blob.size or 0
    await client.put_manifest(remote_repo, remote_ref, body, media_type)
    stats.manifests += 1


async def image_size(store: Store, repo: str, digest: str) -> int:
    """Config + layer bytes of a local image (all platforms of an index)."""
    manifest = await store.get_manifest(repo, digest)
    if manifest is None:
        return 0
    try:
        children, blobs = _parsed(manifest.body, digest)
    except InvalidInput:
        return 0
    return sum(b.size or 0 for b in blobs) + sum([await image_size(store, repo, c.digest) for c in children])
