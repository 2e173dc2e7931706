"""Images in the store as the builder uses them: stages published after a build, stages and
pulled-through bases loaded back into an engine that lacks them, layers brought to the configured
compression, and each image's lock kept as an OCI artifact beside it.

Each built stage is kept in envcache's registry as ``envcache/stage:<chain key>``, so another
machine (through an upstream registry) or this one after an engine reset can start from the
deepest shared stage instead of the base. Base images pulled through the daemon's registry are
loaded the same way (``load_image``). Loading goes through the engine's image import (a
``docker save``-format archive rebuilt from the stored blobs, layers decompressed) because Docker
before 23.0 cannot pull zstd layers; the config bytes are kept, so the loaded image's id is the
stored config digest — and an engine that already holds that id is only given the tag.
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
from envcache.builder.engines.base import Engine, LogFn
from envcache.builder.errors import BuildFailed
from envcache.builder.lock import MEDIA_TYPE, Lock
from envcache.builder.stages import LOCK_FILES
from envcache.builder.stages.pip import INTERPRETER
from envcache.oci import (
    LAYER_MEDIA, LOCK_REPOSITORY, OCI_EMPTY, OCI_MANIFEST, STAGE_REPOSITORY, Descriptor, digest_bytes,
    dumps_manifest, parse_manifest,
)
from envcache.store import KnownLayer, Store, StoredManifest

#: The layer annotation that names the lock's file when ``oras pull`` fetches the artifact.
TITLE = "org.opencontainers.image.title"


async def stored_stage(store: Store, key: str) -> StoredManifest | None:
    """The stored manifest of stage ``key``, or None."""
    manifest = await store.get_manifest(STAGE_REPOSITORY, key)
    if manifest is None or manifest.media_type != OCI_MANIFEST:
        return None
    return manifest


def stored_source(store: Store, manifest_body: bytes) -> ingest_mod.SourceImage:
    """A stored image as an ingest source (uncompressed layer streams)."""
    return ingest_mod.source_from_manifest(manifest_body, store.files.open)


async def stored_config(store: Store, manifest: StoredManifest) -> bytes:
    """The config bytes of a stored single-platform image."""
    parsed = parse_manifest(manifest.body)
    data = await store.files.read(parsed.config.digest) if parsed.config is not None else None
    if data is None:
        raise BuildFailed("ingest", f"the config of {manifest.digest} is not in the store")
    return data


def interpreter_of(manifest: StoredManifest) -> str | None:
    """The interpreter a stored pip stage's pip ran with (its annotation), if recorded."""
    return (parse_manifest(manifest.body).annotations or {}).get(INTERPRETER) or None


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


async def load_image(store: Store, engine: Engine, manifest: StoredManifest, tag: str) -> bool:
    """Give the engine a stored single-platform image under ``tag``; True when it was loaded,
    False when the engine already held it by id (its config digest) and was only given the tag.

    One path for everything the engine gets from the store — stage images and pulled-through
    base images alike — so both keep their config bytes (the engine id stays the config digest
    the image key was computed from) and both avoid the engine's own registry client. Checking
    the engine by id first saves the load (seconds per hundred MB) when only the tag was lost.
    """
    parsed = parse_manifest(manifest.body)
    if parsed.config is not None and await engine.inspect(parsed.config.digest) is not None:
        await engine.tag(parsed.config.digest, tag)
        return False
    with store.files.scratch("envcache-load-") as tmp:
        archive = Path(tmp) / "image.tar"
        await asyncio.to_thread(_write_archive, stored_source(store, manifest.body), tag, archive)
        await engine.load(archive, tag)
    return True


async def conform(store: Store, manifest: StoredManifest, compression: str,
                  log: LogFn) -> list[ingest_mod.LayerBlob]:
    """The layers of a stored image in ``compression``: blobs already in it are kept, others are
    re-compressed once from the stored bytes (the diff_id → blob map remembers them), so an image
    is always served in the configured compression — never in one a client may not read."""
    parsed = parse_manifest(manifest.body)
    source = stored_source(store, manifest.body)
    for diff_id, layer in zip(source.diff_ids, parsed.layers):
        if (layer.media_type or "").endswith(compression) and await store.layers.find(diff_id, compression) is None:
            await store.layers.put(KnownLayer(diff_id, compression, layer.digest, layer.size or 0))
    with store.files.scratch("envcache-conform-") as tmp:
        return await ingest_mod.ingest_layers(store, source, compression, Path(tmp), log)


# --- the lock artifact --------------------------------------------------------------------------


async def put_lock(store: Store, tag: str, lock: Lock, subject: Descriptor) -> str:
    """Store ``lock`` as ``envcache/lock:<tag>``: an OCI artifact (empty config, the lock
    document as its one layer) whose subject is the image, so the referrers API and ``oras
    discover`` find it, gc keeps it with the image, and upstream push/pull carry it."""
    document = lock.dumps()
    await store.write_blob(document, media_type=MEDIA_TYPE)
    await store.write_blob(b"{}", media_type=OCI_EMPTY)
    manifest = dumps_manifest({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": MEDIA_TYPE,
        "config": {"mediaType": OCI_EMPTY, "digest": digest_bytes(b"{}"), "size": 2},
        "layers": [{"mediaType": MEDIA_TYPE, "digest": digest_bytes(document), "size": len(document),
                    "annotations": {TITLE: "envcache-lock.json"}}],
        "subject": subject.to_json(), "annotations": {"envcache.image": tag},
    })
    return await store.put_manifest(LOCK_REPOSITORY, tag, manifest, OCI_MANIFEST)


async def lock_of(store: Store, tag: str) -> Lock | None:
    """The lock stored for image tag ``tag`` (``<image key>-<variant>``), or None."""
    manifest = await store.get_manifest(LOCK_REPOSITORY, tag)
    if manifest is None:
        return None
    layers = parse_manifest(manifest.body).layers
    data = await store.files.read(layers[0].digest) if layers else None
    return Lock.from_json(json.loads(data)) if data is not None else None


async def lock_from_store(store: Store, tag: str, repository: str, digest: str) -> dict[str, Any]:
    """The lock document of a stored image (one pulled rather than built): its lock artifact,
    else the lock files its layers carry under ``/opt/envcache/lock``."""
    found = await lock_of(store, tag)
    if found is not None:
        return found.to_json()
    manifest = await store.get_manifest(repository, digest)
    if manifest is None:
        return Lock().to_json()
    source = stored_source(store, manifest.body)
    files = await asyncio.to_thread(ingest_mod.read_lock_files, source, set(LOCK_FILES.values()))
    return Lock.from_json({kind: json.loads(files[name]) for kind, name in LOCK_FILES.items() if name in files}).to_json()
