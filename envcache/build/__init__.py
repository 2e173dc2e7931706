"""Builds: a definition becomes layered CPU/GPU images through a real engine, ingested into
envcache's registry. Heavy imports (aiodocker, rattler) load on first use, so importing
``envcache.build`` for ``resolve_variant`` stays cheap."""

from __future__ import annotations

import importlib
from typing import Any

from envcache.build.errors import BuildFailed, EngineUnavailable
from envcache.build.variants import resolve_variant, variant_base_image

_LAZY = {
    "RECIPE_VERSION": "envcache.build.plan",
    "build_image": "envcache.build.builder",
    "BuiltImage": "envcache.build.builder",
    "ingest_image": "envcache.build.builder",
    "stage_keys_for": "envcache.build.builder",
    "lock_from_store": "envcache.build.stages",
    "detect_engine": "envcache.build.engines",
    "DockerEngine": "envcache.build.engines",
    "BuildahEngine": "envcache.build.engines",
    "Engine": "envcache.build.engines",
}

__all__ = ["BuildFailed", "EngineUnavailable", "resolve_variant",
           "variant_base_image", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'envcache.build' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
