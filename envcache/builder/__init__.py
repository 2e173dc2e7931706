"""Builds: a definition becomes layered CPU/GPU images through a real engine, ingested into
envcache's registry. Heavy imports (aiodocker, rattler) load on first use, so importing
``envcache.builder`` for ``resolve_variant`` stays cheap."""

from __future__ import annotations

import importlib
from typing import Any

from envcache.builder.errors import BuildFailed, EngineUnavailable
from envcache.builder.variants import variant_base_image

_LAZY = {
    "RECIPE_VERSION": "envcache.builder.plan",
    "build_image": "envcache.builder.builder",
    "BuiltImage": "envcache.builder.builder",
    "ingest_image": "envcache.builder.builder",
    "stage_keys_for": "envcache.builder.builder",
    "lock_from_store": "envcache.builder.stages",
    "detect_engine": "envcache.builder.engines",
    "DockerEngine": "envcache.builder.engines",
    "BuildahEngine": "envcache.builder.engines",
    "Engine": "envcache.builder.engines",
}

__all__ = ["BuildFailed", "EngineUnavailable", "variant_base_image", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'envcache.builder' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
