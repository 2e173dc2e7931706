"""Build stages, one class per kind (repo2docker's ``BuildPack`` is the model).

A definition is built as a chain of stages — base image + Dockerfile steps → conda environment →
pip packages → Spark jars → configuration — each one generated Dockerfile ``FROM <previous
stage>`` plus its own steps, built and tagged ``envcache-stage:<chain key>`` in the engine.
Stable things come first, so definitions that share a prefix share those stages.

Each :class:`Stage` owns, for its kind: its canonical content (from the definition layer's
canonical helpers), whether it applies, its recipe (Dockerfile + build context), whether the
recipe needs the network, and the lock file it leaves in the image. :func:`chain` orders the
applicable stages and keys each one on its parent (:func:`envcache.builder.keys.chain_key`);
stage keys depend on the resolved base, a build-time fact, so they are computed here, not in
the definition layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from envcache.builder.keys import chain_key
from envcache.builder.stages.base import BaseStage
from envcache.builder.stages.conda import CondaStage
from envcache.builder.stages.config import ConfigStage
from envcache.builder.stages.pip import PipStage
from envcache.builder.stages.spark import SparkStage
from envcache.builder.stages.stage import LOCK_DIR, RecipeContext, Stage, StageRecipe, quote
from envcache.definition.model import Definition
from envcache.definition.variants import for_variant
from envcache.errors import DefinitionError

#: Every stage kind, in build order.
KINDS: list[type[Stage]] = [BaseStage, CondaStage, PipStage, SparkStage, ConfigStage]
#: Stage kind → the lock file it writes under :data:`LOCK_DIR`.
LOCK_FILES = {kind.kind: kind.lock_file for kind in KINDS if kind.lock_file}
#: The engine's tag for a built stage: ``envcache-stage:<chain key>``.
STAGE_REPO = "envcache-stage"

__all__ = ["KINDS", "LOCK_DIR", "LOCK_FILES", "PlannedStage", "RecipeContext", "Stage", "StageRecipe", "chain",
           "parse_locks", "quote", "stage_chain", "stage_tag", "unpinned_requirements"]


def stage_tag(key: str) -> str:
    return f"{STAGE_REPO}:{key}"


@dataclass(frozen=True)
class PlannedStage:
    """A stage in a chain: its kind, its chain key, the content the key covers, and its class."""

    kind: str
    key: str
    content: dict[str, Any]
    stage: Stage


def chain(view: Definition, root_key: str) -> list[PlannedStage]:
    """The stages of a variant-applied definition, in build order, keyed from ``root_key``.

    conda and pip are absent when dependencies are user-managed or their lists are empty,
    spark when there are no Spark packages; base and config are always there.
    """
    planned: list[PlannedStage] = []
    parent = root_key
    try:
        for kind in KINDS:
            stage = kind(view)
            if stage.applies():
                content = stage.content()
                parent = chain_key(parent, kind.kind, content)
                planned.append(PlannedStage(kind.kind, parent, content, stage))
    except ValueError as exc:  # a Definition built in code, never validated by a loader
        raise DefinitionError(str(exc)) from None
    return planned


def stage_chain(defn: Definition, variant: str, root_key: str) -> list[PlannedStage]:
    """:func:`chain` of ``defn`` as built for ``variant``."""
    return chain(for_variant(defn, variant), root_key)


def parse_locks(files: dict[str, bytes]) -> dict[str, Any]:
    """Lock files (as read from an image) as the lock is reported: pip freeze lines, conda and
    Spark records; a kind whose stage the image lacks is an empty list."""
    names = LOCK_FILES
    locks: dict[str, Any] = {"pip": [], "conda": [], "spark": []}
    if names["pip"] in files:
        locks["pip"] = [line.strip() for line in files[names["pip"]].decode().splitlines() if line.strip()]
    for kind in ("conda", "spark"):
        if names[kind] in files:
            locks[kind] = json.loads(files[names[kind]])
    return locks


def unpinned_requirements(view: Definition) -> list[str]:
    """Requirements that do not name one exact version (pip first, then conda): their
    resolution can drift, so the lock recorded at build time is what they resolved to *then*."""
    return PipStage(view).unpinned() + CondaStage(view).unpinned()
