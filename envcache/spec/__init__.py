"""Environment definitions: the model, its loaders, its canonical form and its keys.

Everything else in envcache is keyed by what this package computes, so it is pure and offline:
no network, no engine. See README, "The definition format" and "Canonical rules".

Names are imported on first use (PEP 562): the ``envcache`` command loads this package for
every verb, and only ``hash``/``canonical``/``diff``/``convert`` need the parsers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "envcache.spec.azure": ("read_azure_dir", "write_azure_dir"),
    "envcache.spec.canonical": ("CANONICAL_VERSION", "base_reference", "canonical_bytes", "canonical_form", "spec_hash"),
    "envcache.spec.keys": ("Stage", "for_variant", "stage_chain"),
    "envcache.spec.loaders": ("load_definition",),
    "envcache.spec.model": ("VARIANTS", "CondaDependencies", "Definition", "DockerSection", "PythonSection",
                            "RegistryCredentials", "SparkPackage", "SparkSection", "VariantOverride"),
    "envcache.spec.reference": ("definition_from_dict", "definition_to_dict"),
}
# Here rather than in ``loaders``: the CLI offers them as ``--format`` choices without loading a parser.
FORMATS = ("yaml", "json", "azure-dir", "conda", "conda-export", "requirements")

_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "CANONICAL_VERSION", "FORMATS", "VARIANTS", "CondaDependencies", "Definition", "DockerSection", "PythonSection",
    "RegistryCredentials", "SparkPackage", "SparkSection", "Stage", "VariantOverride", "base_reference", "canonical_bytes",
    "canonical_form", "definition_from_dict", "definition_to_dict", "for_variant", "load_definition",
    "read_azure_dir", "spec_hash", "stage_chain", "write_azure_dir",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'envcache.spec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # static checkers and IDEs see the real names
    from envcache.spec.azure import read_azure_dir, write_azure_dir
    from envcache.spec.canonical import CANONICAL_VERSION, base_reference, canonical_bytes, canonical_form, spec_hash
    from envcache.spec.keys import Stage, for_variant, stage_chain
    from envcache.spec.loaders import load_definition
    from envcache.spec.model import (
        VARIANTS, CondaDependencies, Definition, DockerSection, PythonSection, RegistryCredentials, SparkPackage,
        SparkSection, VariantOverride,
    )
    from envcache.spec.reference import definition_from_dict, definition_to_dict
