"""Walking a definition's stage chain through the engine: resolve what is not locked, reuse what
exists, build the rest.

A stage's key covers its part of the lock (:func:`~envcache.builder.stages.stage_key`), so a key
is known once that part is: from the image's lock (a rebuild installs exactly it), or by
resolving now — conda and Spark on the host, pip in a throw-away container of the parent image.
Each stage is then taken from the engine (tag ``envcache-stage:<key>``), else from the store
(``envcache/stage:<key>``, loaded into the engine only if a later stage has to be built on it),
else built. The configuration stage is not an engine stage: the builder writes it from the last
stage's stored config.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from envcache.builder import stored
from envcache.builder.engines.base import Engine, ImageInfo, LogFn, LogTail
from envcache.builder.errors import BuildFailed
from envcache.builder.helper import HelperServer, host_ca_bundle
from envcache.builder.plan import BuildPlan
from envcache.builder.settings import BuildSettings
from envcache.builder.stages import PlannedStage, RecipeContext, stage_key, stage_tag
from envcache.builder.stages.stage import Entry
from envcache.errors import EnvcacheError
from envcache.store import Store, StoredManifest


@dataclass
class Walked:
    """What walking the chain left: each engine stage's key, what was built or resolved now,
    and the annotations the built stages get when stored."""

    keys: list[str] = field(default_factory=list)
    built: list[str] = field(default_factory=list)      # kinds built now (the rest were reused)
    resolved: list[str] = field(default_factory=list)   # kinds whose packages were resolved now
    annotations: dict[str, dict[str, str]] = field(default_factory=dict)   # stage key → annotations


class ChainWalk:
    """One walk over the engine stages of ``plan`` (every stage but the configuration)."""

    def __init__(self, plan: BuildPlan, stages: list[PlannedStage], *, store: Store, engine: Engine,
                 settings: BuildSettings, tail: LogTail, base: ImageInfo, base_name: str, root: str,
                 parts: Mapping[str, list[Entry]]) -> None:
        self.plan, self.stages, self.store, self.engine = plan, stages, store, engine
        self.settings, self.tail, self.log = settings, tail, tail.line
        self.parts: dict[str, list[Entry]] = dict(parts)   # the lock, as far as it is known
        self.parent_key, self.parent_ref, self.parent_info = root, base_name, base
        self._pending: StoredManifest | None = None         # the parent, still only in the store
        self.walked = Walked()

    async def run(self, tmp: Path) -> Walked:
        has_conda = any(s.kind == "conda" for s in self.stages)
        helper = HelperServer()
        ca_bundle = host_ca_bundle(self.settings.ca_bundle)
        try:
            for index, planned in enumerate(self.stages):
                directory = tmp / f"{index}-{planned.kind}"
                directory.mkdir()
                ctx = RecipeContext(self.parent_ref, None, directory, self.plan.variant, has_conda, helper, ca_bundle,
                                    engine=self.engine, log=self.log, wheel_file=functools.partial(self._wheel_file, tmp))
                await self._stage(planned, ctx)
        finally:
            await helper.stop()
        return self.walked

    async def _wheel_file(self, tmp: Path, digest: str) -> Path | None:
        """The stored wheel's blob file (a copy in the build's directory when the blob driver
        keeps no local files), or None when the store has no such wheel."""
        if not await self.store.has_blob(digest):
            return None
        path = self.store.files.local_path(digest)
        if path is None:
            path = tmp / digest.replace(":", "-")
            await asyncio.to_thread(_copy_blob, self.store, digest, path)
        return path

    async def _stage(self, planned: PlannedStage, ctx: RecipeContext) -> None:
        timeout = float(self.settings.stage_timeout)
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                if planned.stage.inspects_parent:
                    ctx.parent_info = await self._parent_info()
                if planned.stage.resolves and planned.kind not in self.parts:
                    if planned.stage.resolves_in_image:
                        await self._parent_in_engine()
                    self.log(f"stage {planned.kind}: resolving")
                    self.parts[planned.kind] = await planned.stage.resolve(ctx)
                    self.walked.resolved.append(planned.kind)
                    self.log(f"stage {planned.kind}: resolved {len(self.parts[planned.kind])} package(s)")
                key = stage_key(self.parent_key, planned, self.parts.get(planned.kind))
                if await self.engine.inspect(stage_tag(key)) is not None:
                    self.log(f"stage {planned.kind} {key}: cached in {self.engine.name}")
                    self._pending = None
                elif (found := await stored.stored_stage(self.store, key)) is not None:
                    self.log(f"stage {planned.kind} {key}: stored in envcache's registry")
                    self._pending = found
                else:
                    await self._parent_in_engine()
                    await self._build(planned, ctx, key)
                    self.log(f"stage {planned.kind} {key}: built in {time.monotonic() - started:.1f}s")
        except TimeoutError:
            raise BuildFailed(planned.kind, f"stage exceeded its time limit of {timeout:g}s", self.tail.text()) from None
        except EnvcacheError:
            raise
        except Exception as exc:  # engine gone, disk full…: still one clear message, no traceback
            raise BuildFailed(planned.kind, f"{type(exc).__name__}: {exc}", self.tail.text()) from exc
        self.walked.keys.append(key)
        self.parent_key, self.parent_ref, self.parent_info = key, stage_tag(key), None

    async def _build(self, planned: PlannedStage, ctx: RecipeContext, key: str) -> None:
        self.log(f"stage {planned.kind} {key}: building")
        ctx.part = self.parts.get(planned.kind, [])
        recipe = await planned.stage.recipe(ctx)
        if recipe.dockerfile.strip() == f"FROM {ctx.parent}":
            # Nothing to run: the stage is its parent, as Docker builds it (same id); buildah's
            # FROM-only bud would re-commit it and leave its working container behind.
            await self.engine.tag(ctx.parent, stage_tag(key))
        else:
            (ctx.directory / "Dockerfile").write_text(recipe.dockerfile)
            await self.engine.build(ctx.directory, stage_tag(key), network=recipe.network, log=self.log,
                                    step=planned.kind, display=recipe.display)
        if recipe.after is not None:
            try:
                self.walked.annotations[key] = recipe.after()
            except BaseException:
                await self.engine.remove(stage_tag(key))   # never keep a stage that is not its lock
                raise
        self.walked.built.append(planned.kind)

    async def _parent_in_engine(self) -> None:
        """Load the parent stage from the store when only the store has it."""
        if self._pending is not None:
            loaded = await stored.load_image(self.store, self.engine, self._pending, self.parent_ref)
            how = "loaded into" if loaded else "found by id in"
            self.log(f"stage {self.parent_key}: {how} {self.engine.name} from envcache's registry")
            self._pending = None

    async def _parent_info(self) -> ImageInfo | None:
        """The parent's config: the engine's, or the stored one when only the store has it."""
        if self.parent_info is not None:
            return self.parent_info
        if self._pending is not None:
            config = await stored.stored_config(self.store, self._pending)
            return ImageInfo(id="", config=json.loads(config).get("config") or {})
        return await self.engine.inspect(self.parent_ref)


def _copy_blob(store: Store, digest: str, path: Path) -> None:
    with store.files.open(digest) as source, open(path, "wb") as out:
        shutil.copyfileobj(source, out)
