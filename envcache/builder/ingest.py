"""Engine image → OCI blobs, manifest and tag in envcache's store: the whole ingest pipeline.

An engine exports images with *uncompressed* layer tars (``docker save`` or an OCI layout).
Each layer is identified by its diff_id (sha256 of the uncompressed tar, what the image config
lists in ``rootfs.diff_ids``); the compressed blob envcache serves is a different digest. The
table ``build_layer_blobs`` (part of the store's schema) maps one to the other per compression,
so a layer ingested once (every base layer, every shared stage) is never read or compressed
again — re-ingest costs the export and a lookup.

Layers are stored as the engine wrote them (their diff_ids are the engine's). The config is
stored *reproducible* (:func:`reproducible_config`): the engine's build time, container ids and
the build's one-shot helper URL are replaced by fixed values, so the same key and lock give the
same config — and the same manifest — on any machine. The stored image's id is therefore that
config's digest, not the engine's; an engine that loads it back gets the stored id.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zstandard
from isal import igzip, igzip_threaded

from envcache.builder.engines.base import Engine, ExportedImage, LogFn
from envcache.builder.errors import BuildFailed
from envcache.builder.stages import CREATED, LOCK_DIR
from envcache.oci import (
    ENV_REPOSITORY, LAYER_MEDIA, OCI_CONFIG, OCI_MANIFEST, Descriptor, image_manifest, parse_manifest,
    platform_of_config,
)
from envcache.progress import Ticker
from envcache.progress import size as sized
from envcache.store import KnownLayer, Store
CHUNK = 1 << 20
ZSTD_LEVEL = 3
# gzip through ISA-L (python-isal): level 2 on two threads is as fast as zstd level 3 here and
# about 10× faster than zlib level 6, for ~14 % more bytes; its output does not depend on the
# thread count (README "Layer compression").
GZIP_LEVEL = 2
GZIP_THREADS = 2
#: The build's loopback helper (random port and token) as it appears in a RUN line.
_HELPER_URL = re.compile(r"http://127\.0\.0\.1:\d+/[0-9a-f]{32}")
#: What an engine records about the build itself rather than the image (container ids, versions).
_BUILD_FIELDS = ("container", "container_config", "docker_version")

Opener = Callable[[], contextlib.AbstractContextManager[IO[bytes]]]


@dataclass
class SourceImage:
    """An exported image: config bytes, and per layer its diff_id and an opener that yields
    the uncompressed tar stream."""

    config: bytes
    diff_ids: list[str]
    layers: list[Opener]


@dataclass
class LayerBlob:
    diff_id: str
    digest: str
    size: int
    media_type: str
    reused: bool


# --- reading what the engine exported ----------------------------------------------------


def open_export(exported: ExportedImage, stack: contextlib.ExitStack, ref: str | None = None) -> SourceImage:
    """Read an export (the image named ``ref`` when the archive holds several); files opened
    here stay open until ``stack`` closes."""
    if exported.format == "docker-archive":
        return _read_docker_archive(exported.path, stack, ref)
    return _read_oci_layout(exported.path)


def _read_docker_archive(path: Path, stack: contextlib.ExitStack, ref: str | None) -> SourceImage:
    tar = stack.enter_context(tarfile.open(path, "r:"))
    manifest = json.load(_member(tar, "manifest.json"))
    entries = [e for e in manifest if ref is None or ref in (e.get("RepoTags") or [])] if len(manifest) > 1 else manifest
    if len(entries) != 1:
        raise BuildFailed("ingest", f"expected one image named {ref or '(any)'} in the engine export, "
                                    f"found {len(entries)}")
    entry = entries[0]
    config = _member(tar, entry["Config"]).read()
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    if len(diff_ids) != len(entry["Layers"]):
        raise BuildFailed("ingest", "engine export lists a different number of layers than its config")

    def opener(name: str) -> Opener:
        @contextlib.contextmanager
        def open_layer() -> Iterator[IO[bytes]]:
            yield _member(tar, name)
        return open_layer

    return SourceImage(config, diff_ids, [opener(name) for name in entry["Layers"]])


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    handle = tar.extractfile(name)
    if handle is None:
        raise BuildFailed("ingest", f"engine export has no file {name}")
    return handle


def _read_oci_layout(root: Path) -> SourceImage:
    def blob(digest: str) -> IO[bytes]:
        algorithm, hexdigest = digest.split(":", 1)
        return open(root / "blobs" / algorithm / hexdigest, "rb")

    index = json.loads((root / "index.json").read_text())
    with blob(index["manifests"][0]["digest"]) as manifest:
        return source_from_manifest(manifest.read(), blob)


def source_from_manifest(manifest_body: bytes, open_blob: Callable[[str], IO[bytes]]) -> SourceImage:
    """An OCI image manifest whose blobs ``open_blob(digest)`` reads, as an ingest source: one
    reader for an engine's OCI layout and for images in envcache's own store."""
    manifest = parse_manifest(manifest_body)
    if manifest.config is None:
        raise BuildFailed("ingest", "the image manifest has no config")
    with open_blob(manifest.config.digest) as handle:
        config = handle.read()
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    layers = [functools.partial(open_layer_blob, open_blob, d.digest, d.media_type or "") for d in manifest.layers]
    return SourceImage(config, diff_ids, layers)


@contextlib.contextmanager
def open_layer_blob(open_blob: Callable[[str], IO[bytes]], digest: str, media_type: str) -> Iterator[IO[bytes]]:
    """A layer blob as its uncompressed tar stream, whatever compression its media type names
    (``+gzip`` and Docker's ``.gzip``, ``+zstd``, or none)."""
    with open_blob(digest) as raw:
        if media_type.endswith("gzip"):
            with igzip.IGzipFile(fileobj=raw) as stream:
                yield stream  # type: ignore[misc]
        elif media_type.endswith("+zstd"):
            with zstandard.ZstdDecompressor().stream_reader(raw) as stream:
                yield stream  # type: ignore[misc]
        else:
            yield raw


# --- compressing layers into the store -----------------------------------------------------


class _Compressor:
    """A write-only compressed stream with deterministic output (no names, no timestamps), so
    equal layers always become equal blobs."""

    def __init__(self, compression: str, out: IO[bytes]) -> None:
        if compression == "zstd":
            cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
            self._stream: Any = cctx.stream_writer(out, closefd=False)
        elif compression == "gzip":
            # No name and mtime 0 in the header: equal layers, equal blobs.
            self._stream = igzip_threaded.open(out, "wb", compresslevel=GZIP_LEVEL, threads=GZIP_THREADS)
        else:
            raise BuildFailed("ingest", f"unknown compression {compression!r} (use zstd or gzip)")

    def write(self, data: bytes) -> None:
        self._stream.write(data)

    def close(self) -> None:
        self._stream.close()


@dataclass
class LayerProgress:
    """Bytes of one layer read and stored so far: written by the compressing thread, read by the
    progress line (plain integers, so no lock is needed for a number shown to people)."""

    read: int = 0
    stored: int = 0


def compress_layer(stream: IO[bytes], compression: str, tmp_dir: Path,
                   progress: LayerProgress | None = None) -> tuple[str, str, Path]:
    """Compress ``stream`` into a temp file under ``tmp_dir``; returns (diff_id, blob digest,
    temp path). Both digests are computed in the same pass."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="layer-", dir=tmp_dir)
    path = Path(name)
    uncompressed = hashlib.sha256()
    progress = progress or LayerProgress()
    try:
        with os.fdopen(fd, "wb") as raw:
            hashing = _HashingWriter(raw, progress)
            compressor = _Compressor(compression, hashing)
            while chunk := stream.read(CHUNK):
                uncompressed.update(chunk)
                compressor.write(chunk)
                progress.read += len(chunk)
            compressor.close()
            raw.flush()
            os.fsync(raw.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return "sha256:" + uncompressed.hexdigest(), "sha256:" + hashing.hasher.hexdigest(), path


class _HashingWriter(io.RawIOBase):
    def __init__(self, out: IO[bytes], progress: LayerProgress) -> None:
        self.out = out
        self.hasher = hashlib.sha256()
        self.progress = progress

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.hasher.update(view)
        self.out.write(view)
        self.progress.stored += len(view)
        return len(view)


def read_lock_files(source: SourceImage, expected: set[str]) -> dict[str, bytes]:
    """The lock files (``/opt/envcache/lock/<name>``) as the image sees them: the topmost layer
    holding a file wins. Layers are scanned from the top only until every expected file is
    found, so the (large) base layers are normally never read."""
    found: dict[str, bytes] = {}
    if not expected:
        return found
    prefix = LOCK_DIR.lstrip("/") + "/"
    for opener in reversed(source.layers):
        with opener() as stream, tarfile.open(fileobj=stream, mode="r|") as layer:
            for member in layer:
                name = member.name.removeprefix("./").lstrip("/")
                if name.startswith(prefix) and member.isfile() and name[len(prefix):] not in found:
                    handle = layer.extractfile(member)
                    if handle is not None:
                        found[name[len(prefix):]] = handle.read()
        if expected <= found.keys():
            break
    return found


# --- storing ----------------------------------------------------------------------------------


@dataclass
class IngestTarget:
    """An engine image to store as ``repository:tag``."""

    ref: str
    repository: str
    tag: str
    annotations: dict[str, str] = field(default_factory=dict)


async def ingest_image(store: Store, engine: Engine, ref: str, tag: str, compression: str, log: LogFn, *,
                       repository: str = ENV_REPOSITORY) -> dict[str, Any]:
    """Export ``ref`` from the engine and store it as ``repository:tag``."""
    return (await ingest_images(store, engine, [IngestTarget(ref, repository, tag)], compression, log))[0]


async def ingest_images(store: Store, engine: Engine, targets: list[IngestTarget], compression: str,
                        log: LogFn) -> list[dict[str, Any]]:
    """Export the targets from the engine and store each; per target: manifest (bytes and
    digest), size, layers and platform."""
    if compression not in LAYER_MEDIA:
        raise BuildFailed("ingest", f"unknown compression {compression!r} (use zstd or gzip)")
    results: list[dict[str, Any]] = []
    with store.files.scratch("envcache-export-") as tmp:
        exports = await engine.export_many([t.ref for t in targets], Path(tmp))
        with contextlib.ExitStack() as stack:
            for target in targets:
                source = await asyncio.to_thread(open_export, exports[target.ref], stack, target.ref)
                layers = await ingest_layers(store, source, compression, Path(tmp), log)
                results.append(await store_image(store, target, reproducible_config(source.config), layers))
    return results


def reproducible_config(config: bytes) -> bytes:
    """The engine's config without what only says *when* and *how* it was built: ``created`` and
    every history time at SOURCE_DATE_EPOCH, no container or parent ids, no engine version, and
    the build's helper URL (a random port and token) out of the history's commands."""
    doc = json.loads(config)
    for name in _BUILD_FIELDS:
        doc.pop(name, None)
    # Docker's runtime config names the engine's id of the image each step started from.
    (doc.get("config") or {}).pop("Image", None)
    doc["created"] = CREATED
    for entry in doc.get("history") or []:
        entry["created"] = CREATED
        if "created_by" in entry:
            entry["created_by"] = _HELPER_URL.sub("$ENVCACHE_BUILD_HELPER", entry["created_by"])
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


async def store_image(store: Store, target: IngestTarget, config: bytes, layers: list[LayerBlob]) -> dict[str, Any]:
    """Config, manifest and tag for layers already stored; what the build reports of the image."""
    # write_blob skips the write when the config is stored already (every re-ingest).
    await store.write_blob(config, media_type=OCI_CONFIG)
    manifest = image_manifest(config, [Descriptor(l.digest, l.media_type, l.size) for l in layers], target.annotations)
    digest = await store.put_manifest(target.repository, target.tag, manifest, OCI_MANIFEST)
    return {"manifest": manifest, "manifest_digest": digest, "platform": platform_of_config(config),
            "size": len(manifest) + len(config) + sum(layer.size for layer in layers),
            "layers": [{"diff_id": l.diff_id, "digest": l.digest, "size": l.size, "reused": l.reused} for l in layers]}


async def ingest_layers(store: Store, source: SourceImage, compression: str, tmp: Path,
                         log: LogFn) -> list[LayerBlob]:
    """Known layers by table lookup; new ones compressed in a worker thread (SQLite stays on
    the event loop's thread)."""
    media = LAYER_MEDIA[compression]
    result: list[LayerBlob] = []
    for diff_id, opener in zip(source.diff_ids, source.layers):
        known = await store.layers.find(diff_id, compression)
        if known is not None and await store.has_blob(known.blob_digest):
            # Refresh last access so a concurrent GC's grace period covers the blob until our
            # manifest references it.
            await store.blobs.touch(known.blob_digest)
            result.append(LayerBlob(diff_id, known.blob_digest, known.size, media, True))
            continue
        started = time.monotonic()
        progress = LayerProgress()
        # A big layer takes a while to compress: say how far it got every few seconds.
        async with Ticker(log, lambda ticker: f"ingest: layer {diff_id[7:19]}: {sized(progress.read)} read, "
                                              f"{sized(progress.stored)} stored ({compression})"):
            digest, size = await _compress_and_store(store, opener, compression, tmp, diff_id, media, progress)
        await store.layers.put(KnownLayer(diff_id, compression, digest, size))
        log(f"ingest: layer {diff_id[7:19]} → {digest[7:19]} ({compression}, {progress.read} bytes read, "
            f"{size} stored, {time.monotonic() - started:.1f}s)")
        result.append(LayerBlob(diff_id, digest, size, media, False))
    return result


async def _compress_and_store(store: Store, opener: Opener, compression: str, tmp: Path,
                              diff_id: str, media: str, progress: LayerProgress) -> tuple[str, int]:
    """Compress one layer (a worker thread) and store it as a blob; returns (blob digest, size).
    The layer must hash to the diff_id the engine's config names."""

    def compress() -> tuple[str, str, Path]:
        with opener() as stream:
            return compress_layer(stream, compression, tmp, progress)

    actual, digest, path = await asyncio.to_thread(compress)
    try:
        if actual != diff_id:
            raise BuildFailed("ingest", f"layer content hashes to {actual}, but the engine's config says {diff_id}")
        # Both digests were computed over exactly the bytes written: no second read.
        return await store.adopt_blob(path, digest, verified=True, media_type=media)
    finally:
        path.unlink(missing_ok=True)
