"""``build_image``: a prepared plan → stages in the engine → an image in the store.

The image key's lock (``envcache/lock:<image key>-<variant>``) decides what is installed: a key
built before — here after gc, on another daemon through an upstream — installs exactly its lock;
a new key (or ``--refresh``) resolves now and records what it resolved. The stage chain is walked
(:mod:`envcache.builder.chain`): stages the engine or the store already has are reused, the rest
are built one generated Dockerfile at a time. Stages built now are ingested into the store, the
configuration stage is written from the last stage's stored config, and the image is tagged
``envcache/env:<image key>-<variant>`` with its lock beside it. Only a complete image is ever
tagged; a failure leaves no image and no stage tag for the stage that failed. Each stage runs
under the configured time limit, and cancelling the task stops the engine's work.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envcache.builder import ingest, stored
from envcache.builder.chain import ChainWalk, Walked
from envcache.builder.engines.base import Engine, ImageInfo, LogFn, LogTail
from envcache.builder.errors import BuildFailed
from envcache.builder.keys import RECIPE_VERSION, root_key
from envcache.builder.lock import KINDS, Lock
from envcache.builder.plan import BuildPlan
from envcache.builder.settings import BuildSettings
from envcache.builder.stages import PlannedStage, stage_key, stage_tag, stages_of
from envcache.builder.stages.base import BaseStage
from envcache.builder.stages.config import ConfigStage
from envcache.builder.stages.stage import Entry
from envcache.errors import EnvcacheError, InvalidInput
from envcache.oci import (
    ENV_REPOSITORY, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, STAGE_REPOSITORY, Descriptor, RegistryLogin, digest_bytes,
    image_index, image_manifest, image_tag, parse_manifest, parse_reference, platform_of_config,
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
    resolved: list[str] = field(default_factory=list)      # kinds resolved now (the rest came from the lock)
    layers: list[dict[str, Any]] = field(default_factory=list)  # diff_id, digest, size, reused
    compression: str = ""


async def ensure_base(engine: Engine, ref: str, log: LogFn, *, store: Store | None = None,
                      stored_base: StoredBase | None = None, login: RegistryLogin | None = None) -> ImageInfo:
    """The base image in the engine: as it is, else loaded from envcache's own registry, else
    pulled by the engine from its origin.

    The store's copy (pulled through the daemon from a mirror or the origin, with the daemon's
    credentials and TLS settings) comes first, so the engine needs neither, and the image the
    key was resolved from is the one built on. It is loaded under the very name the definition
    uses, so the generated ``FROM`` resolves locally. A digest-pinned name cannot be given to a
    loaded image (engines record digests only on pull): such bases are pulled by the engine, with
    the definition's ``login``.
    """
    info = await engine.inspect(ref)
    if info is not None:
        return info
    if store is not None and stored_base is not None and "@" not in ref:
        info = await _load_stored_base(engine, ref, log, store, stored_base)
        if info is not None:
            return info
    if login is not None:
        login = login.for_host(parse_reference(ref).host)
    return await engine.pull(ref, log, login)


async def _load_stored_base(engine: Engine, ref: str, log: LogFn, store: Store,
                            stored_base: StoredBase) -> ImageInfo | None:
    """The store's copy of base ``ref`` loaded into the engine; None (pull instead) when the
    store has none or the engine will not take it."""
    found = await stored_base(ref)
    manifest = await store.get_manifest(*found) if found is not None else None
    if found is None or manifest is None:
        return None
    try:
        loaded = await stored.load_image(store, engine, manifest, _tagged(ref))
    except EnvcacheError as exc:
        log(f"base {ref}: cannot load the copy in envcache's registry ({exc}); pulling it instead")
        return None
    info = await engine.inspect(ref)
    if info is None:
        log(f"base {ref}: loaded from envcache's registry but {engine.name} does not find it; pulling it instead")
        return None
    how = "loaded into" if loaded else "found by id in"
    log(f"base {ref}: {how} {engine.name} from envcache's registry ({found[0]}@{found[1]})")
    return info


def _tagged(ref: str) -> str:
    """``busybox`` → ``busybox:latest``: an image archive's tag must name a tag, as a pull would."""
    return ref if ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"


async def build_image(plan: BuildPlan, *, store: Store, engine: Engine | None, settings: BuildSettings,
                      log: LogFn, stored_base: StoredBase | None = None) -> BuiltImage:
    """Build ``plan`` and store it as ``envcache/env:<image key>-<variant>``, with its lock.

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
    base = await ensure_base(engine, base_name, out, store=store, stored_base=stored_base, login=plan.login)
    tag = image_tag(plan.key, plan.variant)
    parts = await locked_parts(store, tag, plan, out)
    *engine_stages, config = stages_of(plan.definition)
    walk = ChainWalk(plan, engine_stages, store=store, engine=engine, settings=settings, tail=tail, base=base,
                     base_name=base_name, root=root_key(base.id), parts=parts)
    with tempfile.TemporaryDirectory(prefix="envcache-build-") as tmp:
        walked = await walk.run(Path(tmp))
    lock = Lock().with_parts({kind: walk.parts.get(kind, []) for kind in KINDS}, plan.definition)
    try:
        await _store_stages(store, engine, engine_stages, walked, settings.compression, out)
        result = await _write_image(store, plan, tag, config, engine_stages, walked, lock, settings.compression, out)
    except EnvcacheError:
        raise
    except Exception as exc:
        raise BuildFailed("ingest", f"{type(exc).__name__}: {exc}", tail.text()) from exc
    await _update_index(store, plan.index_tag, plan.variant, result["manifest_digest"], len(result["manifest"]),
                        result["platform"], plan.key)
    config_key = stage_key(walked.keys[-1], config)
    image = BuiltImage(ENV_REPOSITORY, tag, result["manifest_digest"], result["size"], lock.to_json(),
                       base_digest=plan.base_digest or base.id, stage_keys=[*walked.keys, config_key],
                       stages_built=walked.built, resolved=walked.resolved, layers=result["layers"],
                       compression=settings.compression)
    out(f"image {ENV_REPOSITORY}:{tag} {result['manifest_digest']} ({result['size']} bytes, "
        f"{lock.packages} locked package(s))")
    return image


async def locked_parts(store: Store, tag: str, plan: BuildPlan, log: LogFn) -> dict[str, list[Entry]]:
    """The parts of the image's lock this build installs exactly: all of them when the key has a
    lock, except — on a refresh — those of stages with unpinned packages, which resolve again."""
    lock = await stored.lock_of(store, tag)
    if lock is None:
        return {}
    fresh = {item.partition(":")[0] for item in lock.unpinned} if plan.refresh else set()
    if fresh:
        log(f"refresh: resolving {', '.join(sorted(fresh))} again ({len(lock.unpinned)} unpinned package(s))")
    parts = {kind: lock.part(kind) for kind in KINDS if kind not in fresh}
    counts = ", ".join(f"{len(part)} {kind}" for kind, part in parts.items() if part)
    log(f"lock: installing exactly the lock of {tag} ({counts or 'no packages'})")
    return parts


async def _store_stages(store: Store, engine: Engine, stages: list[PlannedStage], walked: Walked,
                        compression: str, log: LogFn) -> None:
    """Every stage of the chain the store lacks (built now, or only in the engine), in one export."""
    targets = [ingest.IngestTarget(stage_tag(key), STAGE_REPOSITORY, key,
                                   {"envcache.stage": planned.kind, **walked.annotations.get(key, {})})
               for planned, key in zip(stages, walked.keys) if await stored.stored_stage(store, key) is None]
    if targets:
        await ingest.ingest_images(store, engine, targets, compression, log)


async def _write_image(store: Store, plan: BuildPlan, tag: str, config: PlannedStage, stages: list[PlannedStage],
                       walked: Walked, lock: Lock, compression: str, log: LogFn) -> dict[str, Any]:
    """The image: the last stage's layers (in the configured compression) under the config the
    configuration stage writes, annotated, tagged, with its lock artifact beside it."""
    parent = await stored.stored_stage(store, walked.keys[-1])
    if parent is None:
        raise BuildFailed("ingest", f"stage {walked.keys[-1]} is not in the store")
    layers = await stored.conform(store, parent, compression, log)
    pip = next((key for planned, key in zip(stages, walked.keys) if planned.kind == "pip"), None)
    pip_stage = await stored.stored_stage(store, pip) if pip is not None else None
    declared = plan.definition.python.interpreter_path.strip() or "python"
    interpreter = (stored.interpreter_of(pip_stage) if pip_stage is not None else None) or declared
    if interpreter != declared:
        log(f"config: the image has no {declared!r}; pip ran with {interpreter!r}, which the label records")
    assert isinstance(config.stage, ConfigStage)
    image_config = config.stage.image_config(await stored.stored_config(store, parent),
                                             has_conda=any(s.kind == "conda" for s in stages), interpreter=interpreter)
    await store.write_blob(image_config, media_type=OCI_CONFIG)
    annotations = {"envcache.variant": plan.variant, "envcache.image-key": plan.key,
                   "envcache.spec-hash": plan.index_tag, "envcache.lock": digest_bytes(lock.dumps())}
    base_stage = stages[0].stage
    unreproducible = base_stage.unreproducible() if isinstance(base_stage, BaseStage) else None
    if unreproducible:
        annotations["envcache.reproducible"] = f"no: {unreproducible}"
    descriptors = [Descriptor(layer.digest, layer.media_type, layer.size) for layer in layers]
    manifest = image_manifest(image_config, descriptors, annotations)
    digest = await store.put_manifest(ENV_REPOSITORY, tag, manifest, OCI_MANIFEST)
    await stored.put_lock(store, tag, lock, Descriptor(digest, OCI_MANIFEST, len(manifest)))
    return {"manifest": manifest, "manifest_digest": digest, "platform": platform_of_config(image_config),
            "size": len(manifest) + len(image_config) + sum(layer.size for layer in layers),
            "layers": [{"diff_id": l.diff_id, "digest": l.digest, "size": l.size, "reused": l.reused} for l in layers]}


async def recompress_image(store: Store, repository: str, tag: str, compression: str, log: LogFn) -> BuiltImage:
    """The stored image ``repository:tag`` re-stored with its layers in ``compression``: the
    same config (so the same image id) and annotations, a new manifest under the same tag, its
    lock re-pointed at it. No engine, no resolution: the image, not its definition, is kept."""
    current = await store.get_manifest(repository, tag)
    if current is None or current.media_type != OCI_MANIFEST:
        raise BuildFailed("ingest", f"{repository}:{tag} is not a stored image manifest")
    parsed = parse_manifest(current.body)
    layers = await stored.conform(store, current, compression, log)
    config = await stored.stored_config(store, current)
    manifest = image_manifest(config, [Descriptor(l.digest, l.media_type, l.size) for l in layers],
                              parsed.annotations or {})
    digest = await store.put_manifest(repository, tag, manifest, OCI_MANIFEST)
    lock = await stored.lock_of(store, tag)
    if lock is not None:
        await stored.put_lock(store, tag, lock, Descriptor(digest, OCI_MANIFEST, len(manifest)))
    annotations = parsed.annotations or {}
    if {"envcache.spec-hash", "envcache.variant", "envcache.image-key"} <= annotations.keys():
        await _update_index(store, annotations["envcache.spec-hash"], annotations["envcache.variant"], digest,
                            len(manifest), platform_of_config(config), annotations["envcache.image-key"])
    log(f"image {repository}:{tag} {current.digest} → {digest} ({compression})")
    return BuiltImage(repository, tag, digest, len(manifest) + len(config) + sum(l.size for l in layers),
                      lock.to_json() if lock is not None else {}, compression=compression,
                      layers=[{"diff_id": l.diff_id, "digest": l.digest, "size": l.size, "reused": l.reused}
                              for l in layers])


def _base_name(plan: BuildPlan) -> str:
    if plan.base_name is not None:
        return plan.base_name
    if plan.definition.docker.base_dockerfile:
        raise BuildFailed("base", "the base Dockerfile has no FROM line")
    raise InvalidInput(f"the definition names no base image and the daemon config has no "
                       f"[variants.{plan.variant}] base_image; set one of them")


async def stage_keys_for(plan: BuildPlan, *, engine: Engine, log: LogFn = lambda line: None,
                         store: Store | None = None, stored_base: StoredBase | None = None) -> list[str]:
    """The chain keys ``build_image`` would use for its engine stages (shallowest first), as far
    as they are known without resolving: a stage that resolves packages needs its part of the
    key's lock (from the store). The base is resolved in the engine (loaded from the store or
    pulled if missing), exactly as a build does."""
    base = await ensure_base(engine, _base_name(plan), log, store=store, stored_base=stored_base, login=plan.login)
    parts = await locked_parts(store, image_tag(plan.key, plan.variant), plan, log) if store is not None else {}
    keys, parent = [], root_key(base.id)
    for planned in stages_of(plan.definition)[:-1]:
        if planned.stage.resolves and planned.kind not in parts:
            break
        parent = stage_key(parent, planned, parts.get(planned.kind))
        keys.append(parent)
    return keys


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
