"""The Spark stage: the listed Maven packages fetched and verified on the host, copied into the
image's Spark jars directory (``$SPARK_HOME/jars`` when the base sets it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envcache.builder import maven
from envcache.builder.errors import BuildFailed
from envcache.builder.stages.stage import LOCK_DIR, Entry, RecipeContext, Stage, StageRecipe
from envcache.definition.canonical import spark_content

DEFAULT_SPARK_JARS = "/opt/spark/jars"


class SparkStage(Stage):
    kind = "spark"
    lock_file = "spark.json"
    inspects_parent = True  # a base's SPARK_HOME
    resolves = True          # Maven coordinates are exact, but the jar bytes are what is locked

    def __init__(self, view: Any) -> None:
        super().__init__(view)
        self._fetched: list[Entry] | None = None   # what the last resolve put into the context

    def applies(self) -> bool:
        return bool(self.view.spark.packages)

    def content(self) -> dict[str, Any]:
        return spark_content(self.view)

    def _jars_dir(self, ctx: RecipeContext) -> str:
        env = ctx.parent_info.env() if ctx.parent_info is not None else {}
        return env["SPARK_HOME"].rstrip("/") + "/jars" if env.get("SPARK_HOME") else DEFAULT_SPARK_JARS

    def _root(self, ctx: RecipeContext) -> Path:
        return ctx.directory / "root"

    async def resolve(self, ctx: RecipeContext) -> list[Entry]:
        """Fetch (and verify against the repository's checksums) into the build context."""
        spark = self.view.spark
        if not spark.precache_packages:
            return [{"coordinate": f"{p.group}:{p.artifact}:{p.version}", "precached": False} for p in spark.packages]
        jars_dir = self._jars_dir(ctx)
        jars = await maven.fetch_jars(spark.packages, spark.repositories, self._root(ctx) / jars_dir.lstrip("/"))
        self._fetched = [{**jar.as_dict(), "path": f"{jars_dir}/{jar.file_name}"} for jar in jars]
        return self._fetched

    async def recipe(self, ctx: RecipeContext) -> StageRecipe:
        if self._fetched != ctx.part and await self.resolve(ctx) != ctx.part:
            raise BuildFailed("spark", "the Maven repositories now serve different bytes for the locked jars "
                                       f"({', '.join(e['coordinate'] for e in ctx.part)}); "
                                       "`envcache ensure --refresh` fetches them again")
        lock_path = self._root(ctx) / LOCK_DIR.lstrip("/") / self.lock_file
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path.write_text(json.dumps(ctx.part, indent=1, sort_keys=True))
        return StageRecipe(f"FROM {ctx.parent}\nCOPY root/ /\n")
