"""Build stages, one class per kind (repo2docker's ``BuildPack`` is the model).

A definition is built as a chain of stages — base image + Dockerfile steps → conda environment →
pip packages → Spark jars → configuration — each but the last one generated Dockerfile ``FROM
<previous stage>`` plus its own steps, built and tagged ``envcache-stage:<chain key>`` in the
engine; the configuration stage is written as an image config. Stable things come first, so
definitions that share a prefix share those stages.

Each :class:`Stage` owns, for its kind: its canonical content (from the definition layer's
canonical helpers), whether it applies, how it resolves its packages (its part of the lock), its
recipe (Dockerfile + build context) installing exactly that part, and the lock file it leaves in
the image. :func:`stages_of` orders the applicable stages and :func:`stage_key` keys each one on
its parent (:func:`envcache.builder.keys.chain_key`) and its part of the lock; stage keys depend
on the resolved base and the lock, build-time facts, so they are computed here, not in the
definition layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from envcache.builder.keys import chain_key
from envcache.builder.lock import Lock, part_digest
from envcache.builder.stages.base import BaseStage
from envcache.builder.stages.conda import CondaStage
from envcache.builder.stages.config import ConfigStage
from envcache.builder.stages.pip import PipStage
from envcache.builder.stages.spark import SparkStage
from envcache.builder.stages.stage import (
    CREATED, LOCK_DIR, SOURCE_DATE_EPOCH, Entry, RecipeContext, Stage, StageRecipe,
)
from envcache.definition.model import Definition
from envcache.definition.variants import for_variant
from envcache.errors import DefinitionError

#: Every stage kind, in build order.
KINDS: list[type[Stage]] = [BaseStage, CondaStage, PipStage, SparkStage, ConfigStage]
#: Stage kind → the lock file it writes under :data:`LOCK_DIR`.
LOCK_FILES = {kind.kind: kind.lock_file for kind in KINDS if kind.lock_file}
#: The engine's tag for a built stage: ``envcache-stage:<chain key>``.
STAGE_REPO = "envcache-stage"

__all__ = ["CREATED", "KINDS", "LOCK_DIR", "LOCK_FILES", "SOURCE_DATE_EPOCH", "PlannedStage", "RecipeContext",
           "Stage", "StageRecipe", "stage_chain", "stage_key", "stage_tag", "stages_of"]


def stage_tag(key: str) -> str:
    return f"{STAGE_REPO}:{key}"


@dataclass(frozen=True)
class PlannedStage:
    """A stage in a chain: its kind, its chain key ("" until known), the content the key covers,
    and its class."""

    kind: str
    key: str
    content: dict[str, Any]
    stage: Stage


def stages_of(view: Definition) -> list[PlannedStage]:
    """The stages of a variant-applied definition, in build order, not keyed yet.

    conda and pip are absent when dependencies are user-managed or their lists are empty,
    spark when there are no Spark packages; base and config are always there.
    """
    planned: list[PlannedStage] = []
    try:
        for kind in KINDS:
            stage = kind(view)
            if stage.applies():
                planned.append(PlannedStage(kind.kind, "", stage.content(), stage))
    except ValueError as exc:  # a Definition built in code, never validated by a loader
        raise DefinitionError(str(exc)) from None
    return planned


def stage_key(parent: str, planned: PlannedStage, part: Sequence[Entry] | None = None) -> str:
    """A stage's chain key: its parent's key, its kind, its canonical content — and, for a stage
    that resolves packages, the digest of its part of the lock, so that one key is one set of
    installed packages (two resolutions of the same requirements are two stages)."""
    content = planned.content
    if planned.stage.resolves:
        content = {**content, "lock": part_digest(list(part or []))}
    return chain_key(parent, planned.kind, content)


def stage_chain(defn: Definition, variant: str, root_key: str, lock: Lock | None = None) -> list[PlannedStage]:
    """The stages of ``defn`` as built for ``variant`` with ``lock`` (empty by default), keyed."""
    parts: Mapping[str, list[Entry]] = {kind: (lock or Lock()).part(kind) for kind in ("conda", "pip", "spark")}
    keyed, parent = [], root_key
    for planned in stages_of(for_variant(defn, variant)):
        parent = stage_key(parent, planned, parts.get(planned.kind))
        keyed.append(replace(planned, key=parent))
    return keyed
