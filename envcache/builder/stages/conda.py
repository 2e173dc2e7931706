"""The conda stage: the environment solved and installed on the host (py-rattler), copied in."""

from __future__ import annotations

import re
from typing import Any

from envcache.builder import conda
from envcache.builder.engines.base import ImageInfo
from envcache.builder.stages.stage import LOCK_DIR, RecipeContext, Stage, StageRecipe
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

    def applies(self) -> bool:
        python = self.view.python
        return not python.user_managed_dependencies and bool(python.conda_dependencies.conda_packages)

    def content(self) -> dict[str, Any]:
        return conda_content(self.view)

    async def recipe(self, ctx: RecipeContext) -> StageRecipe:
        deps = self.view.python.conda_dependencies
        root = ctx.directory / "root"
        prefix = root / conda.PREFIX.lstrip("/")
        lock = await conda.install_prefix(list(deps.channels), list(deps.conda_packages), prefix,
                                          cuda=cuda_version(ctx.variant, ctx.parent_info))
        conda.write_lock(lock, root / LOCK_DIR.lstrip("/") / self.lock_file)
        # The prefix's PATH entry is set by the config stage (one ENV for all); the pip stage puts
        # it first on PATH for its own RUN.
        return StageRecipe(f"FROM {ctx.parent}\nCOPY root/ /\n")

    def unpinned(self) -> list[str]:
        unpinned = []
        for entry in self.view.python.conda_dependencies.conda_packages:
            spec = entry.split("::")[-1].strip()
            parts = re.split(r"\s+|(?==)", spec, maxsplit=1)
            rest = parts[1].strip() if len(parts) > 1 else ""
            exact = rest.startswith("==") or (rest.startswith("=") and not rest.endswith("*") and rest.count("=") >= 2)
            if not exact:
                unpinned.append(f"conda:{entry}")
        return unpinned
