"""The conda stage: the environment solved and installed on the host (py-rattler), copied in."""

from __future__ import annotations

import re
from typing import Any

from envcache.builder import conda
from envcache.builder.engines.base import ImageInfo
from envcache.builder.errors import BuildFailed
from envcache.builder.lock import conda_specs
from envcache.builder.stages.stage import LOCK_DIR, Entry, RecipeContext, Stage, StageRecipe
from envcache.definition.canonical import conda_content
from envcache.definition.model import Variant


def cuda_version(variant: str, parent_info: ImageInfo | None) -> str | None:
    """The CUDA version a GPU image offers: its base image's ``CUDA_VERSION`` (NVIDIA's and
    Azure ML's CUDA images set it), as major.minor."""
    if variant != Variant.GPU or parent_info is None:
        return None
    match = re.match(r"\d+(\.\d+)?", parent_info.env().get("CUDA_VERSION", ""))
    return match.group(0) if match else None


class CondaStage(Stage):
    kind = "conda"
    lock_file = "conda.json"
    inspects_parent = True  # a GPU base's CUDA version
    resolves = True

    def __init__(self, view: Any) -> None:
        super().__init__(view)
        self._solved: list[Any] = []   # the records the last resolve chose (installed as they are)

    def applies(self) -> bool:
        python = self.view.python
        return not python.user_managed_dependencies and bool(python.conda_dependencies.conda_packages)

    def content(self) -> dict[str, Any]:
        return conda_content(self.view)

    async def resolve(self, ctx: RecipeContext) -> list[Entry]:
        deps = self.view.python.conda_dependencies
        self._solved = await conda.solve(list(deps.channels), list(deps.conda_packages),
                                         cuda_version(ctx.variant, ctx.parent_info))
        return conda.lock_entries(self._solved)

    async def recipe(self, ctx: RecipeContext) -> StageRecipe:
        records = self._solved if conda.lock_entries(self._solved) == ctx.part else await self._exactly(ctx)
        root = ctx.directory / "root"
        await conda.install(records, root / conda.PREFIX.lstrip("/"))
        conda.write_lock(ctx.part, root / LOCK_DIR.lstrip("/") / self.lock_file)
        # The prefix's PATH entry is set by the config stage (one ENV for all); the pip stage puts
        # it first on PATH for its own RUN.
        return StageRecipe(f"FROM {ctx.parent}\nCOPY root/ /\n")

    async def _exactly(self, ctx: RecipeContext) -> list[Any]:
        """The lock's records, found again in the channels by explicit specs (version, build and
        sha256): the same packages, whatever the channels have gained since."""
        records = await conda.solve(list(self.view.python.conda_dependencies.channels), conda_specs(ctx.part),
                                    cuda_version(ctx.variant, ctx.parent_info))
        found = conda.lock_entries(records)
        if found != ctx.part:
            missing = sorted({f"{e['name']} {e['version']} {e['build']}" for e in ctx.part} -
                             {f"{e['name']} {e['version']} {e['build']}" for e in found})
            raise BuildFailed("conda", "the channels no longer provide exactly the locked packages "
                                       f"({', '.join(missing) or 'different artifacts'}); "
                                       "`envcache ensure --refresh` resolves the definition again")
        return records
