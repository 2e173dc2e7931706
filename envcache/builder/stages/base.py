"""The base stage: the base image, or the definition's own Dockerfile (which has its FROM)."""

from __future__ import annotations

from typing import Any

from envcache.builder.stages.stage import RecipeContext, Stage, StageRecipe
from envcache.definition.canonical import CANONICAL_VERSION, base_content


class BaseStage(Stage):
    kind = "base"

    def content(self) -> dict[str, Any]:
        return {"canonical_version": CANONICAL_VERSION, **base_content(self.view)}

    async def recipe(self, ctx: RecipeContext) -> StageRecipe:
        text = self.view.docker.base_dockerfile
        if text:
            # The user's own steps may fetch anything: they get the network.
            return StageRecipe(text if text.endswith("\n") else text + "\n", network=True)
        return StageRecipe(f"FROM {ctx.parent}\n")
