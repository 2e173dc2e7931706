"""``build_image``: a prepared plan → stages in the engine → an image in the store.

The build starts at the deepest stage the engine already has (tag ``envcache-stage:<chain
key>``) or can load from the store, builds the rest one generated Dockerfile at a time, then
ingests the final image into the store and tags it ``envcache/env:<image key>-<variant>``. Only
a complete, ingested image is ever tagged in the store; a failure leaves the store untouched and
no stage tag for the stage that failed. Each stage runs under the configured time limit, and
cancelling the task stops the engine's build.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envcache.builder import ingest, stored
from envcache.builder.engines.base import Engine, ImageInfo, LogFn, LogTail
from envcache.builder.errors import BuildFailed
from envcache.builder.helper import HelperServer, host_ca_bundle
from envcache.builder.keys import RECIPE_VERSION, root_key
from envcache.builder.plan import BuildPlan
from envcache.builder.settings import BuildSettings
from envcache.builder.stages import LOCK_FILES, PlannedStage, RecipeContext, chain, stage_tag, unpinned_requirements
from envcache.errors import EnvcacheError, InvalidInput
from envcache.oci import (
    ENV_REPOSITORY, LAYER_MEDIA, OCI_INDEX, OCI_MANIFEST, STAGE_REPOSITORY, Descriptor, image_index, image_tag,
    parse_manifest,
)
from envcache.store import Store

# Where the store keeps a base image pulled through the daemon: reference → (repository,
# digest of a single-platform manifest), or None. The composition root passes one in, built from
# the upstream tier's naming (``envcache.upstream.base.stored_copy``), so the builder never
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
        await stored.load_image(store, engine, manifest, _tagged(ref))
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


async def build_image(plan: BuildPlan, *, store: Store, engine: Engine | None, settings: BuildSettings,
                      log: LogFn, stored_base: StoredBase | None = None) -> BuiltImage:
    """Build ``plan`` and store it as ``envcache/env:<image key>-<variant>``.

    The image records the base digest the plan was resolved to; the chain root always uses the
    engine's own id of the base image, so stage keys match what is built. ``stored_base`` finds a
    base the engine lacks in the store (see ``ensure_base``).
    """
    if engine is None:
        raise BuildFailed("setup", "no container engine is configured or detected: install Docker "
                                   "(apt-get install docker.io) or buildah (apt-get install buildah), "
                                   "or set [build] engine in the config")
    tail = LogTail(log)  # the caller's log, plus the last lines for a failure message
    out = tail.line
    base_name = _base_name(plan)
    base = await ensure_base(engine, base_name, out, store=store, stored_base=stored_base)
    stages = chain(plan.definition, root_key(base.id))
    timeout = float(settings.stage_timeout)

    start = await _deepest_available(stages, store, engine, out)
    for stage in stages[:start]:
        out(f"stage {stage.kind} {stage.key}: cached in {engine.name}")

    has_conda = any(stage.kind == "conda" for stage in stages)
    ca_bundle = host_ca_bundle(settings.ca_bundle)
    built: list[str] = []
    helper = HelperServer()
    try:
        with tempfile.TemporaryDirectory(prefix="envcache-build-") as tmp:

            async def wheel_file(digest: str) -> Path | None:
                """The stored wheel's blob file (a copy in the build's directory when the blob
                driver keeps no local files)."""
                if not await store.has_blob(digest):
                    return None
                path = store.files.local_path(digest)
                if path is None:
                    path = Path(tmp) / digest.replace(":", "-")
                    await asyncio.to_thread(_copy_blob, store, digest, path)
                return path

            for index in range(start, len(stages)):
                stage = stages[index]
                parent = stage_tag(stages[index - 1].key) if index else base_name
                context = Path(tmp) / f"{index}-{stage.kind}"
                context.mkdir()
                started = time.monotonic()
                out(f"stage {stage.kind} {stage.key}: building")
                try:
                    async with asyncio.timeout(timeout):
                        info = (await engine.inspect(parent) if index else base) if stage.stage.inspects_parent else None
                        recipe = await stage.stage.recipe(RecipeContext(parent, info, context, plan.variant,
                                                                        has_conda, helper, ca_bundle, wheel_file))
                        (context / "Dockerfile").write_text(recipe.dockerfile)
                        await engine.build(context, stage_tag(stage.key), network=recipe.network, log=out,
                                           step=stage.kind, display=recipe.display)
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

    final = stage_tag(stages[-1].key)
    tag = image_tag(plan.key, plan.variant)
    target = ingest.IngestTarget(final, ENV_REPOSITORY, tag, {
        "envcache.variant": plan.variant, "envcache.image-key": plan.key, "envcache.spec-hash": plan.index_tag},
        _expected_locks(stages))
    try:
        result = await _from_stored_stage(store, engine, stages[-1].key, target, settings.compression)
        if result is None:
            # One export for the image and every stage the store lacks (Docker writes shared
            # layers once); the stages' layers are a prefix of the image's, so only the image's
            # new layers are compressed.
            stage_targets = [ingest.IngestTarget(stage_tag(s.key), STAGE_REPOSITORY, s.key, {"envcache.stage": s.kind})
                             for s in stages[:-1] if await stored.stored_stage(store, s.key) is None]
            result, *_ = await ingest.ingest_images(store, engine, [target, *stage_targets], settings.compression, out)
            if await stored.stored_stage(store, stages[-1].key) is None:
                await stored.publish_stage_manifest(store, stages[-1].key, stages[-1].kind, result["manifest"])
    except EnvcacheError:
        raise
    except Exception as exc:
        raise BuildFailed("ingest", f"{type(exc).__name__}: {exc}", tail.text()) from exc
    lock = {**result["locks"], "unpinned": unpinned_requirements(plan.definition)}
    await _update_index(store, plan.index_tag, plan.variant, result["manifest_digest"], len(result["manifest"]),
                        result["platform"], plan.key)
    image = BuiltImage(ENV_REPOSITORY, tag, result["manifest_digest"], result["size"], lock,
                       base_digest=plan.base_digest or base.id, stage_keys=[s.key for s in stages],
                       stages_built=built, layers=result["layers"])
    out(f"image {ENV_REPOSITORY}:{tag} {result['manifest_digest']} ({result['size']} bytes)")
    return image


def _copy_blob(store: Store, digest: str, path: Path) -> None:
    with store.files.open(digest) as source, open(path, "wb") as out:
        shutil.copyfileobj(source, out)


def _base_name(plan: BuildPlan) -> str:
    if plan.base_name is not None:
        return plan.base_name
    if plan.definition.docker.base_dockerfile:
        raise BuildFailed("base", "the base Dockerfile has no FROM line")
    raise InvalidInput(f"the definition names no base image and the daemon config has no "
                       f"[variants.{plan.variant}] base_image; set one of them")


async def _deepest_available(stages: list[PlannedStage], store: Store, engine: Engine, log: LogFn) -> int:
    """Index of the first stage to build: after the deepest one the engine has, or can load
    from the store (``envcache/stage:<key>``, e.g. pulled from an upstream)."""
    for index in range(len(stages) - 1, -1, -1):
        key = stages[index].key
        if await engine.inspect(stage_tag(key)) is not None:
            return index + 1
        found = await stored.stored_stage(store, key)
        if found is not None:
            await stored.load_image(store, engine, found, stage_tag(key))
            log(f"stage {key}: loaded into {engine.name} from envcache's registry")
            return index + 1
    return 0


async def stage_keys_for(plan: BuildPlan, *, engine: Engine, log: LogFn = lambda line: None,
                         store: Store | None = None, stored_base: StoredBase | None = None) -> list[str]:
    """The chain keys ``build_image`` would use (shallowest first): the base is resolved in
    the engine (loaded from the store or pulled if missing), exactly as a build does."""
    base = await ensure_base(engine, _base_name(plan), log, store=store, stored_base=stored_base)
    return [stage.key for stage in chain(plan.definition, root_key(base.id))]


def _expected_locks(stages: list[PlannedStage]) -> set[str]:
    return {LOCK_FILES[s.kind] for s in stages if s.kind in LOCK_FILES}


async def _from_stored_stage(store: Store, engine: Engine, key: str, target: ingest.IngestTarget,
                             compression: str) -> dict[str, Any] | None:
    """When the final stage is already stored with this very config (the engine's image id is
    the config digest) and compression, the image is that manifest re-tagged: no export."""
    found = await stored.stored_stage(store, key)
    info = await engine.inspect(target.ref)
    if found is None or info is None:
        return None
    body = parse_manifest(found.body)
    media = LAYER_MEDIA[compression]
    if body.config is None or body.config.digest != info.id or any(layer.media_type != media for layer in body.layers):
        return None
    digests = [body.config.digest, *body.layer_digests]
    for digest in digests:
        if not await store.has_blob(digest):
            return None
    for digest in digests:
        await store.blobs.touch(digest)
    source = stored.stored_source(store, found.body)
    lock_files = await asyncio.to_thread(ingest.read_lock_files, source, target.expected_locks)
    layers = [ingest.LayerBlob(diff_id, layer.digest, layer.size or 0, media, True)
              for diff_id, layer in zip(source.diff_ids, body.layers)]
    return await ingest.store_image(store, target, source.config, layers, lock_files)


async def _update_index(store: Store, shash: str, variant: str, digest: str, size: int, platform: dict[str, str],
                        image_key: str) -> None:
    """``envcache/env:<spec hash>`` is an image index over the variants built for that
    definition, each entry annotated with its variant and image key."""
    async with _INDEX_LOCK:
        entries: list[Descriptor] = []
        current = await store.get_manifest(ENV_REPOSITORY, shash)
        if current is not None and current.media_type == OCI_INDEX:
            entries = [e for e in parse_manifest(current.body).manifests
                       if (e.annotations or {}).get("envcache.variant") != variant]
        entries.append(Descriptor(digest, OCI_MANIFEST, size, platform=platform,
                                  annotations={"envcache.variant": variant, "envcache.image-key": image_key}))
        entries.sort(key=lambda e: (e.annotations or {}).get("envcache.variant", ""))
        await store.put_manifest(ENV_REPOSITORY, shash, image_index(entries), OCI_INDEX)
