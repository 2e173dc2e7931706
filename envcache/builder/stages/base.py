"""The base stage: the base image, or the definition's own Dockerfile (which has its FROM)."""

from __future__ import annotations

import re
from typing import Any

from envcache.builder.stages.stage import RecipeContext, Stage, StageRecipe
from envcache.definition.canonical import CANONICAL_VERSION, base_content
from envcache.definition.dockerfile import normalise_dockerfile

# Dockerfile instructions that can fetch whatever the network serves at build time.
_FETCHING = re.compile(r"(RUN|ADD)\b")


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

    def unreproducible(self) -> str | None:
        """Why this stage cannot promise the same bytes on every build, if it cannot: the
        definition's own ``RUN``/``ADD`` steps may download content nothing pins."""
        text = self.view.docker.base_dockerfile
        steps = sorted({m.group(1) for line in normalise_dockerfile(text or "") if (m := _FETCHING.match(line))})
        return f"the base Dockerfile's {'/'.join(steps)} steps may download unpinned content" if steps else None
