"""``build_image``: one definition + variant → stages in the engine → an image in the store.

The build starts at the deepest stage the engine already has (tag ``envcache-stage:<chain
key>``), builds the rest one generated Dockerfile at a time, then ingests the final image into
the store and tags it ``envcache/env:<image key>-<variant>``. Only a complete, ingested image is
ever tagged in the store; a failure leaves the store untouched and no stage tag for the stage
that failed. Each stage runs under the configured time limit, and cancelling the task stops the
engine's build.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any


from envcache.builder import ingest as ingest_mod
from envcache.builder import plan
from envcache.builder import stages as stages_mod
from envcache.builder.engines.base import Engine, ImageInfo, LogFn, LogTail
from envcache.builder.errors import BuildFailed
from envcache.builder.helper import HelperServer, host_ca_bundle
from envcache.builder.keys import RECIPE_VERSION, root_key
from envcache.builder.variants import variant_base_image
from envcache.definition.variants import resolve_variant
from envcache.definition.dockerfile import dockerfile_base
from envcache.errors import EnvcacheError
from envcache.oci import (
    LAYER_MEDIA, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Descriptor, image_index, image_manifest, parse_manifest,
    platform_of_config,
)
from envcache.definition import Stage, for_variant, spec_hash, stage_chain
from envcache.definition.model import Definition

from envcache.store import KnownLayer

if TYPE_CHECKING:
    from envcache.service.config import Config
    from envcache.store import Store

REPOSITORY = "envcache/env"

# Where the store keeps a base image pulled through the daemon: reference → (repository,
# digest of a single-platform manifest), or None. The service passes one in, built from the
# upstream tier's naming (``envcache.upstream.base.stored_copy``), so the build side never
# imports the upstream tier.
StoredBase = Callable[[str], Awaitable[tuple[str, str] | None]]

# Index read-modify-write must not interleave between concurrent variant builds.
_INDEX_LOCK = asyncio.Lock()


@dataclass
class BuiltImage:
    repository: str
    tag: str
    manifest_digest: str
    size: int
    lock: dict[str, Any]
    base_digest: str = ""
    recipe_version: int = RECIPE_VERSION
    stage_keys: list[str] = field(default_factory=list)
    stages_built: list[str] = field(default_factory=list)  # kinds built now (the rest were cached)
    layers: list[dict[str, Any]] = field(default_factory=list)  # diff_id, digest, size, reused


async def ensure_base(engine: Engine, ref: str, log: LogFn, *, store: Store | None = None,
                      stored_base: StoredBase | None = None) -> ImageInfo:
    """The base image in the engine: as it is, else loaded from envcache's own registry, else
    pulled by the engine from its origin.

    The store's copy (pulled through the daemon from a mirror or the origin, with the daemon's
    credentials and TLS settings) comes first, so the engine needs neither, and the image the
    key was resolved from is the one built on. It is loaded under the very name the definition
    uses, so the generated ``FROM`` resolves locally. A digest-pinned name cannot be given to a
    loaded image (engines record digests only on pull): such bases are pulled by the engine.
    """
    info = await engine.inspect(ref)
    if info is not None:
        return info
    if store is not None and stored_base is not None and "@" not in ref:
        info = await _load_stored_base(engine, ref, log, store, stored_base)
        if info is not None:
            return info
    return await engine.pull(ref, log)


async def _load_stored_base(engine: Engine, ref: str, log: LogFn, store: Store,
                            stored_base: StoredBase) -> ImageInfo | None:
    """The store's copy of base ``ref`` loaded into the engine; None (pull instead) when the
    store has none or the engine will not take it."""
    found = await stored_base(ref)
    manifest = await store.get_manifest(*found) if found is not None else None
    if found is None or manifest is None:
        return None
    try:
        await stages_mod.load_image(store, engine, manifest, _tagged(ref))
    except EnvcacheError as exc:
        log(f"base {ref}: cannot load the copy in envcache's registry ({exc}); pulling it instead")
        return None
    info = await engine.inspect(ref)
    if info is None:
        log(f"base {ref}: loaded from envcache's registry but {engine.name} does not find it; pulling it instead")
        return None
    log(f"base {ref}: loaded into {engine.name} from envcache's registry ({found[0]}@{found[1]})")
    return info


def _tagged(ref: str) -> str:
    """``busybox`` → ``busybox:latest``: an image archive's tag must name a tag, as a pull would."""
    return ref if ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"


async def build_image(defn: Definition, variant: str, *, store: Store, engine: Engine | None, config: Config,
                      image_key: str, log: LogFn, base_digest: str | None = None,
                      stored_base: StoredBase | None = None) -> BuiltImage:
    """Build ``defn`` for ``variant`` and store it as ``envcache/env:<image_key>-<variant>``.

    ``base_digest`` is what the caller resolved the base to (recorded with the image); the chain
    root always uses the engine's own id of the base image, so stage keys match what is built.
    ``stored_base`` finds a base the engine lacks in the store (see ``ensure_base``).
    """
    if engine is None:
        raise BuildFailed("setup", "no container engine is configured or detected: install Docker "
                                   "(apt-get install docker.io) or buildah (apt-get install buildah), "
                                   "or set [build] engine in the config")
    variant = resolve_variant(variant)
    tail = LogTail(log)  # the caller's log, plus the last lines for a failure message
    out = tail.line
    view = for_variant(defn, variant)
    base_ref = _base_ref(view, config, variant)
    base = await ensure_base(engine, base_ref, out, store=store, stored_base=stored_base)
    stages = stage_chain(defn, variant, root_key(base.id))
    timeout = float(config.build.stage_timeout)
    compression = config.build.compression

    start = await _deepest_available(stages, store, engine, out)
    for stage in stages[:start]:
        out(f"stage {stage.kind} {stage.key}: cached in {engine.name}")

    has_conda = any(stage.kind == "conda" for stage in stages)
    built: list[str] = []
    helper = HelperServer()
    try:
        with tempfile.TemporaryDirectory(prefix="envcache-build-") as tmp:
            for index in range(start, len(stages)):
                stage = stages[index]
                parent = plan.stage_tag(stages[index - 1].key) if index else base_ref
                context = Path(tmp) / f"{index}-{stage.kind}"
                context.mkdir()
                started = time.monotonic()
                out(f"stage {stage.kind} {stage.key}: building")
                try:
                    async with asyncio.timeout(timeout):
                        recipe = await _recipe(stage.kind, view, variant, base_ref, parent, context, engine,
                                               helper, config, has_conda)
                        plan.write_context(context, recipe)
                        await engine.build(context, plan.stage_tag(stage.key), network=recipe.network, log=out,
                                           step=stage.kind)
                except TimeoutError:
                    raise BuildFailed(stage.kind, f"stage exceeded its time limit of {timeout:g}s",
                                      tail.text()) from None
                except EnvcacheError:
                    raise
                except Exception as exc:  # engine gone, disk full…: still one clear message, no traceback
                    raise BuildFailed(stage.kind, f"{type(exc).__name__}: {exc}", tail.text()) from exc
                built.append(stage.kind)
                out(f"stage {stage.kind} {stage.key}: built in {time.monotonic() - started:.1f}s")
    finally:
        await helper.stop()

    final = plan.stage_tag(stages[-1].key)
    tag = f"{image_key}-{variant}"
    target = IngestTarget(final, REPOSITORY, tag, {"envcache.variant": variant, "envcache.image-key": image_key,
                                                   "envcache.definition-hash": spec_hash(defn)}, _expected_locks(stages))
    try:
        result = await _from_stored_stage(store, engine, stages[-1].key, target, compression)
        if result is None:
            # One export for the image and every stage the store lacks (Docker writes shared
            # layers once); the stages' layers are a prefix of the image's, so only the image's
            # new layers are compressed.
            stage_targets = [IngestTarget(plan.stage_tag(s.key), stages_mod.STAGE_REPOSITORY, s.key,
                                          {"envcache.stage": s.kind}) for s in stages[:-1]
                             if await stages_mod.stored_stage(store, s.key) is None]
            result, *_ = await ingest_images(store, engine, [target, *stage_targets], compression, out)
            if await stages_mod.stored_stage(store, stages[-1].key) is None:
                await stages_mod.publish_stage_manifest(store, stages[-1].key, stages[-1].kind, result["manifest"])
    except EnvcacheError:
        raise
    except Exception as exc:
        raise BuildFailed("ingest", f"{type(exc).__name__}: {exc}", tail.text()) from exc
    lock = {**result["locks"], "unpinned": plan.unpinned_requirements(view)}
    shash = spec_hash(defn)
    await _update_index(store, shash, variant, result["manifest_digest"], len(result["manifest"]), result["platform"],
                        image_key)
    image = BuiltImage(REPOSITORY, tag, result["manifest_digest"], result["size"], lock,
                       base_digest=base_digest or base.id, stage_keys=[s.key for s in stages], stages_built=built,
                       layers=result["layers"])
    out(f"image {REPOSITORY}:{tag} {result['manifest_digest']} ({result['size']} bytes)")
    return image


async def _deepest_available(stages: list[Stage], store: Store, engine: Engine, log: LogFn) -> int:
    """Index of the first stage to build: after the deepest one the engine has, or can load
    from the store (``envcache/stage:<key>``, e.g. pulled from an upstream)."""
    for index in range(len(stages) - 1, -1, -1):
        key = stages[index].key
        if await engine.inspect(plan.stage_tag(key)) is not None:
            return index + 1
        stored = await stages_mod.stored_stage(store, key)
        if stored is not None:
            await stages_mod.load_image(store, engine, stored, plan.stage_tag(key))
            log(f"stage {key}: loaded into {engine.name} from envcache's registry")
            return index + 1
    return 0


async def stage_keys_for(defn: Definition, variant: str, *, engine: Engine, config: Config,
                         log: LogFn = lambda line: None, store: Store | None = None,
                         stored_base: StoredBase | None = None) -> list[str]:
    """The chain keys ``build_image`` would use (shallowest first): the base is resolved in
    the engine (loaded from the store or pulled if missing), exactly as a build does."""
    variant = resolve_variant(variant)
    view = for_variant(defn, variant)
    base = await ensure_base(engine, _base_ref(view, config, variant), log, store=store, stored_base=stored_base)
    return [stage.key for stage in stage_chain(defn, variant, root_key(base.id))]


def _base_ref(view: Definition, config: Config, variant: str) -> str:
    if view.docker.base_dockerfile:
        ref = dockerfile_base(view.docker.base_dockerfile)
        if ref is None:
            raise BuildFailed("base", "the base Dockerfile has no FROM line")
        return ref
    return view.docker.base_image or variant_base_image(config, variant)


def _expected_locks(stages: list[Stage]) -> set[str]:
    return {plan.LOCK_FILES[s.kind] for s in stages if s.kind in plan.LOCK_FILES}


async def _recipe(kind: str, view: Definition, variant: str, base_ref: str, parent: str, context: Path,
                  engine: Engine, helper: HelperServer, config: Config, has_conda: bool) -> plan.StageRecipe:
    if kind == "base":
        return plan.base_recipe(view, base_ref)
    if kind == "conda":
        return await plan.conda_recipe(view, variant, parent, await engine.inspect(parent), context)
    if kind == "pip":
        if not helper.url:
            await helper.start()
        return plan.pip_recipe(view, parent, helper, host_ca_bundle(config.build.ca_bundle))
    if kind == "spark":
        return await plan.spark_recipe(view, parent, await engine.inspect(parent), context)
    return plan.config_recipe(view, parent, has_conda)


@dataclass
class IngestTarget:
    """An engine image to store as ``repository:tag``."""

    ref: str
    repository: str
    tag: str
    annotations: dict[str, str] = field(default_factory=dict)
    expected_locks: set[str] = field(default_factory=set)


async def ingest_image(store: Store, engine: Engine, ref: str, tag: str, compression: str, log: LogFn, *,
                       repository: str = REPOSITORY) -> dict[str, Any]:
    """Export ``ref`` from the engine and store it as ``repository:tag``."""
    return (await ingest_images(store, engine, [IngestTarget(ref, repository, tag)], compression, log))[0]


async def ingest_images(store: Store, engine: Engine, targets: list[IngestTarget], compression: str,
                        log: LogFn) -> list[dict[str, Any]]:
    """Export the targets from the engine and store each; per target: manifest (bytes and
    digest), size, layers, platform and the lock files found in the image."""
    if compression not in LAYER_MEDIA:
        raise BuildFailed("ingest", f"unknown compression {compression!r} (use zstd or gzip)")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="envcache-export-", dir=store.files.scratch_dir()) as tmp:
        exports = await engine.export_many([t.ref for t in targets], Path(tmp))
        with contextlib.ExitStack() as stack:
            for target in targets:
                source = await asyncio.to_thread(ingest_mod.open_export, exports[target.ref], stack, target.ref)
                layers = await _ingest_layers(store, source, compression, Path(tmp), log)
                lock_files = await asyncio.to_thread(ingest_mod.read_lock_files, source, target.expected_locks)
                results.append(await _store_image(store, target, source.config, layers, lock_files))
    return results


async def _store_image(store: Store, target: IngestTarget, config: bytes, layers: list[ingest_mod.LayerBlob],
                       lock_files: dict[str, bytes]) -> dict[str, Any]:
    # write_bytes skips the temp file when the config is stored already (every re-ingest).
    await store.write_blob(config, media_type=OCI_CONFIG)
    manifest = image_manifest(config, [Descriptor(l.digest, l.media_type, l.size) for l in layers], target.annotations)
    digest = await store.put_manifest(target.repository, target.tag, manifest, OCI_MANIFEST)
    return {"manifest": manifest, "manifest_digest": digest, "platform": platform_of_config(config),
            "size": len(manifest) + len(config) + sum(layer.size for layer in layers),
            "locks": ingest_mod.parse_locks(lock_files),
            "layers": [{"diff_id": l.diff_id, "digest": l.digest, "size": l.size, "reused": l.reused} for l in layers]}


async def _from_stored_stage(store: Store, engine: Engine, key: str, target: IngestTarget,
                             compression: str) -> dict[str, Any] | None:
    """When the final stage is already stored with this very config (the engine's image id is
    the config digest) and compression, the image is that manifest re-tagged: no export."""
    stored = await stages_mod.stored_stage(store, key)
    info = await engine.inspect(target.ref)
    if stored is None or info is None:
        return None
    body = parse_manifest(stored.body)
    media = LAYER_MEDIA[compression]
    if body.config is None or body.config.digest != info.id or any(layer.media_type != media for layer in body.layers):
        return None
    digests = [body.config.digest, *body.layer_digests]
    for digest in digests:
        if not await store.has_blob(digest):
            return None
    for digest in digests:
        await store.blobs.touch(digest)
    source = stages_mod.stored_source(store, stored.body)
    lock_files = await asyncio.to_thread(ingest_mod.read_lock_files, source, target.expected_locks)
    layers = [ingest_mod.LayerBlob(diff_id, layer.digest, layer.size or 0, media, True)
              for diff_id, layer in zip(source.diff_ids, body.layers)]
    return await _store_image(store, target, source.config, layers, lock_files)


async def _ingest_layers(store: Store, source: ingest_mod.SourceImage, compression: str, tmp: Path,
                         log: LogFn) -> list[ingest_mod.LayerBlob]:
    """Known layers by table lookup; new ones compressed in a worker thread (SQLite stays on
    the event loop's thread)."""
    media = LAYER_MEDIA[compression]
    result: list[ingest_mod.LayerBlob] = []
    for diff_id, opener in zip(source.diff_ids, source.layers):
        known = await store.layers.find(diff_id, compression)
        if known is not None and await store.has_blob(known.blob_digest):
            # Refresh last access so a concurrent GC's grace period covers the blob until our
            # manifest references it.
            await store.blobs.touch(known.blob_digest)
            result.append(ingest_mod.LayerBlob(diff_id, known.blob_digest, known.size, media, True))
            continue
        started = time.monotonic()
        digest, size = await _compress_and_store(store, opener, compression, tmp, diff_id, media)
        await store.layers.put(KnownLayer(diff_id, compression, digest, size))
        log(f"ingest: layer {diff_id[7:19]} → {digest[7:19]} ({compression}, {size} bytes, "
            f"{time.monotonic() - started:.1f}s)")
        result.append(ingest_mod.LayerBlob(diff_id, digest, size, media, False))
    return result


async def _compress_and_store(store: Store, opener: ingest_mod.Opener, compression: str, tmp: Path,
                              diff_id: str, media: str) -> tuple[str, int]:
    """Compress one layer (a worker thread) and store it as a blob; returns (blob digest, size).
    The layer must hash to the diff_id the engine's config names."""

    def compress() -> tuple[str, str, Path]:
        with opener() as stream:
            return ingest_mod.compress_layer(stream, compression, tmp)

    actual, digest, path = await asyncio.to_thread(compress)
    try:
        if actual != diff_id:
            raise BuildFailed("ingest", f"layer content hashes to {actual}, but the engine's config says {diff_id}")
        # Both digests were computed over exactly the bytes written: no second read.
        return await store.adopt_blob(path, digest, verified=True, media_type=media)
    finally:
        path.unlink(missing_ok=True)


async def _update_index(store: Store, shash: str, variant: str, digest: str, size: int, platform: dict[str, str],
                        image_key: str) -> None:
    """``envcache/env:<spec hash>`` is an image index over the variants built for that
    definition, each entry annotated with its variant and image key."""
    async with _INDEX_LOCK:
        entries: list[Descriptor] = []
        current = await store.get_manifest(REPOSITORY, shash)
        if current is not None and current.media_type == OCI_INDEX:
            entries = [e for e in parse_manifest(current.body).manifests
                       if (e.annotations or {}).get("envcache.variant") != variant]
        entries.append(Descriptor(digest, OCI_MANIFEST, size, platform=platform,
                                  annotations={"envcache.variant": variant, "envcache.image-key": image_key}))
        entries.sort(key=lambda e: (e.annotations or {}).get("envcache.variant", ""))
        await store.put_manifest(REPOSITORY, shash, image_index(entries), OCI_INDEX)
