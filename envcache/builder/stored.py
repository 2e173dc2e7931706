"""Images in the store as the builder uses them: stages published after a build, stages and
pulled-through bases loaded back into an engine that lacks them, the lock of a stored image.

Each built stage is kept in envcache's registry as ``envcache/stage:<chain key>``, so another
machine (through an upstream registry) or this one after an engine reset can start from the
deepest shared stage instead of the base. Base images pulled through the daemon's registry are
loaded the same way (``load_image``). Loading goes through the engine's image import (a
``docker save``-format archive rebuilt from the stored blobs, layers decompressed) because Docker
before 23.0 cannot pull zstd layers; the config bytes are kept, so the loaded image has the same
id as the one originally built.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from envcache.builder import ingest as ingest_mod
from envcache.builder.engines.base import Engine
from envcache.builder.stages import LOCK_FILES, parse_locks
from envcache.oci import OCI_MANIFEST, STAGE_REPOSITORY, digest_bytes, dumps_manifest, parse_manifest
from envcache.store import Store, StoredManifest


async def stored_stage(store: Store, key: str) -> StoredManifest | None:
    """The stored manifest of stage ``key``, or None."""
    manifest = await store.get_manifest(STAGE_REPOSITORY, key)
    if manifest is None or manifest.media_type != OCI_MANIFEST:
        return None
    return manifest


async def publish_stage_manifest(store: Store, key: str, kind: str, manifest: bytes) -> str:
    """Tag an already ingested image (same config and layers) as stage ``key``."""
    body = dict(parse_manifest(manifest).doc, annotations={"envcache.stage": kind})
    data = dumps_manifest(body)
    return await store.put_manifest(STAGE_REPOSITORY, key, data, OCI_MANIFEST)


def stored_source(store: Store, manifest_body: bytes) -> ingest_mod.SourceImage:
    """A stored image as an ingest source (uncompressed layer streams)."""
    return ingest_mod.source_from_manifest(manifest_body, store.files.open)


def _write_archive(source: ingest_mod.SourceImage, tag: str, path: Path) -> None:
    """A ``docker save``-format archive: what both ``docker load`` and buildah import."""
    config_name = digest_bytes(source.config).split(":", 1)[1] + ".json"
    layer_names = [f"{diff_id.split(':', 1)[1]}/layer.tar" for diff_id in source.diff_ids]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        written: set[str] = set()
        for name, opener in zip(layer_names, source.layers):
            if name in written:
                continue
            written.add(name)
            with tempfile.TemporaryFile(dir=path.parent) as spool:
                with opener() as stream:
                    shutil.copyfileobj(stream, spool, 1 << 20)
                info = tarfile.TarInfo(name)
                info.size = spool.tell()
                spool.seek(0)
                archive.addfile(info, spool)
        for name, data in ((config_name, source.config),
                           ("manifest.json", json.dumps([{"Config": config_name, "RepoTags": [tag],
                                                          "Layers": layer_names}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


async def load_image(store: Store, engine: Engine, manifest: StoredManifest, tag: str) -> None:
    """Load a stored single-platform image into the engine under ``tag``.

    One path for everything the engine gets from the store — stage images and pulled-through
    base images alike — so both keep their config bytes (the engine id stays the config digest
    the image key was computed from) and both avoid the engine's own registry client.
    """
    with store.files.scratch("envcache-load-") as tmp:
        archive = Path(tmp) / "image.tar"
        await asyncio.to_thread(_write_archive, stored_source(store, manifest.body), tag, archive)
        await engine.load(archive, tag)


async def lock_from_store(store: Store, repository: str, digest: str) -> dict[str, Any]:
    """The lock of a stored image (pip freeze, conda records, Spark jars), read from
    ``/opt/envcache/lock/*`` in its layers — for images that were pulled rather than built."""
    manifest = await store.get_manifest(repository, digest)
    if manifest is None:
        return parse_locks({})
    source = stored_source(store, manifest.body)
    files = await asyncio.to_thread(ingest_mod.read_lock_files, source, set(LOCK_FILES.values()))
    return parse_locks(files)
