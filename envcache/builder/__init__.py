"""Builds: a prepared plan becomes layered CPU/GPU images through a real engine, ingested into
envcache's registry. Heavy imports (aiodocker, rattler) load on first use."""

from __future__ import annotations

import importlib
from typing import Any

from envcache.builder.errors import BuildFailed, EngineUnavailable

_LAZY = {
    "RECIPE_VERSION": "envcache.builder.keys",
    "BuildPlan": "envcache.builder.plan",
    "BuildSettings": "envcache.builder.settings",
    "build_image": "envcache.builder.build",
    "BuiltImage": "envcache.builder.build",
    "stage_keys_for": "envcache.builder.build",
    "ingest_image": "envcache.builder.ingest",
    "lock_from_store": "envcache.builder.stored",
    "detect_engine": "envcache.builder.engines",
    "DockerEngine": "envcache.builder.engines",
    "BuildahEngine": "envcache.builder.engines",
    "Engine": "envcache.builder.engines",
}

__all__ = ["BuildFailed", "EngineUnavailable", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'envcache.builder' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
