"""Per-variant views of a definition and the build-stage chain keys.

A stage key is ``xxh3-128(parent key, stage kind, canonical content of the stage)``, so two
environments that share a base and conda packages share those stage keys (and cached layers)
even when their pip lists differ. The chain starts from ``root_key``, which the builder supplies
(resolved base-image digest + recipe version): the spec stays offline and pure.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import xxhash

from envcache.errors import DefinitionError
from envcache.spec.canonical import (
    CANONICAL_VERSION, base_content, conda_content, conda_package_name, config_content, dumps_canonical, pip_content,
    pip_package_name, spark_content,
)
from envcache.spec.model import VARIANTS, Definition, VariantOverride

StageKind = Literal["base", "conda", "pip", "spark", "config"]


@dataclass(frozen=True)
class Stage:
    kind: StageKind
    key: str
    content: dict[str, Any]


def for_variant(defn: Definition, variant: str) -> Definition:
    """The definition as built for ``variant``: its override applied, ``variants`` dropped.

    A base image or Dockerfile in the override replaces the general base; listed channels and
    options are appended; a package in the override replaces a general package of the same name.
    ``docker.base_image_registry`` stays, so a variant's base image that names no registry comes
    from its address too (a private name never falls through to Docker Hub).
    """
    if variant not in VARIANTS:
        raise DefinitionError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}", location="variant")
    out = copy.deepcopy(defn)
    override = out.variants.get(variant)
    out.variants = {}
    if override is None:
        return out
    try:
        _apply(out, override)
    except ValueError as exc:
        raise DefinitionError(str(exc), location=f"variants.{variant}") from None
    return out


def _apply(out: Definition, override: VariantOverride) -> None:
    if override.base_image is not None:
        out.docker.base_image, out.docker.base_dockerfile = override.base_image, None
    if override.base_dockerfile is not None:
        out.docker.base_dockerfile, out.docker.base_image = override.base_dockerfile, None
    deps = out.python.conda_dependencies
    deps.channels = deps.channels + override.channels
    deps.pip_options = deps.pip_options + override.pip_options
    replaced_conda = {conda_package_name(p) for p in override.conda_packages}
    deps.conda_packages = [p for p in deps.conda_packages if conda_package_name(p) not in replaced_conda] + override.conda_packages
    replaced_pip = {pip_package_name(p) for p in override.pip_packages} - {None}
    deps.pip_packages = [p for p in deps.pip_packages if pip_package_name(p) not in replaced_pip] + override.pip_packages


def chain_key(parent: str, kind: str, content: dict[str, Any]) -> str:
    return xxhash.xxh3_128_hexdigest(f"{parent}\n{kind}\n".encode() + dumps_canonical(content))


def stage_chain(defn: Definition, variant: str, root_key: str) -> list[Stage]:
    """Build stages for ``variant`` in order: base → conda → pip → spark → config.

    conda and pip are absent when dependencies are user-managed or their lists are empty,
    spark when there are no Spark packages; base and config are always there.
    """
    try:
        return _stage_chain(for_variant(defn, variant), root_key)
    except ValueError as exc:  # a Definition built in code, never validated by a loader
        raise DefinitionError(str(exc)) from None


def _stage_chain(view: Definition, root_key: str) -> list[Stage]:
    user_managed = view.python.user_managed_dependencies
    deps = view.python.conda_dependencies
    planned: list[tuple[StageKind, dict[str, Any]]] = [
        ("base", {"canonical_version": CANONICAL_VERSION, **base_content(view)})]
    if not user_managed and deps.conda_packages:
        planned.append(("conda", conda_content(view)))
    if not user_managed and deps.pip_packages:
        planned.append(("pip", pip_content(view)))
    if view.spark.packages:
        planned.append(("spark", spark_content(view)))
    planned.append(("config", config_content(view)))
    stages: list[Stage] = []
    parent = root_key
    for kind, content in planned:
        parent = chain_key(parent, kind, content)
        stages.append(Stage(kind, parent, content))
    return stages
