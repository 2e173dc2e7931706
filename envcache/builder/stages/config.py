"""The config stage: environment variables and labels, no layer of files."""

from __future__ import annotations

import re
from typing import Any

from envcache.builder import conda
from envcache.builder.keys import RECIPE_VERSION
from envcache.builder.stages.stage import RecipeContext, Stage, StageRecipe, quote
from envcache.definition.canonical import config_content
from envcache.errors import InvalidInput


class ConfigStage(Stage):
    kind = "config"

    def content(self) -> dict[str, Any]:
        return config_content(self.view)

    async def recipe(self, ctx: RecipeContext) -> StageRecipe:
        """One ENV line (the conda prefix, then the definition's variables) and one LABEL line."""
        env: dict[str, str] = {}
        if ctx.has_conda:
            env["CONDA_PREFIX"] = conda.PREFIX
        for key, value in sorted(self.view.environment_variables.items()):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
                raise InvalidInput(f"environment_variables: {key!r} is not a valid variable name")
            env[str(key)] = str(value)
        lines = [f"FROM {ctx.parent}"]
        if env:
            pairs = [f"{key}={quote(value)}" for key, value in env.items()]
            if ctx.has_conda:
                # PATH must expand against the parent's PATH, so it is the one unquoted value.
                pairs.insert(1, f"PATH={conda.PREFIX}/bin:$PATH")
            lines.append("ENV " + " ".join(pairs))
        # One LABEL line: on the classic Docker builder every instruction after FROM costs a
        # container (a full rootfs copy on vfs), and API-level labels cost one per label.
        lines.append(f"LABEL envcache.interpreter_path={quote(self.view.python.interpreter_path.strip())} "
                     f"envcache.recipe_version={quote(str(RECIPE_VERSION))}")
        return StageRecipe("\n".join(lines) + "\n")
