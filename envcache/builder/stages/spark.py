"""The Spark stage: the listed Maven packages fetched and verified on the host, copied into the
image's Spark jars directory (``$SPARK_HOME/jars`` when the base sets it)."""

from __future__ import annotations

import json
from typing import Any

from envcache.builder import maven
from envcache.builder.stages.stage import LOCK_DIR, RecipeContext, Stage, StageRecipe
from envcache.definition.canonical import spark_content

DEFAULT_SPARK_JARS = "/opt/spark/jars"


class SparkStage(Stage):
    kind = "spark"
    lock_file = "spark.json"
    inspects_parent = True  # a base's SPARK_HOME

    def applies(self) -> bool:
        return bool(self.view.spark.packages)

    def content(self) -> dict[str, Any]:
        return spark_content(self.view)

    async def recipe(self, ctx: RecipeContext) -> StageRecipe:
        spark = self.view.spark
        root = ctx.directory / "root"
        jars_dir = DEFAULT_SPARK_JARS
        if ctx.parent_info is not None and ctx.parent_info.env().get("SPARK_HOME"):
            jars_dir = ctx.parent_info.env()["SPARK_HOME"].rstrip("/") + "/jars"
        if spark.precache_packages:
            jars = await maven.fetch_jars(spark.packages, spark.repositories, root / jars_dir.lstrip("/"))
            lock: list[dict[str, Any]] = [{**jar.as_dict(), "path": f"{jars_dir}/{jar.file_name}"} for jar in jars]
        else:
            lock = [{"coordinate": f"{p.group}:{p.artifact}:{p.version}", "precached": False} for p in spark.packages]
        lock_path = root / LOCK_DIR.lstrip("/") / self.lock_file
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path.write_text(json.dumps(lock, indent=1, sort_keys=True))
        return StageRecipe(f"FROM {ctx.parent}\nCOPY root/ /\n")
