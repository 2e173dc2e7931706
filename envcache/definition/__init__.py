"""Environment definitions: the model, its loaders, its canonical form, its variants.

Everything else in envcache is keyed by what this package computes, so it is pure and offline:
no network, no engine. See README, "The definition format" and "Canonical rules".

Names are imported on first use (PEP 562): the ``envcache`` command loads this package for
every verb, and only ``hash``/``canonical``/``diff``/``convert`` need the parsers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "envcache.definition.azure": ("read_azure_dir", "write_azure_dir"),
    "envcache.definition.canonical": ("CANONICAL_VERSION", "base_reference", "canonical_bytes", "canonical_form",
                                      "spec_hash"),
    "envcache.definition.variants": ("for_variant", "resolve_variant"),
    "envcache.definition.loaders": ("load_definition",),
    "envcache.definition.model": ("VARIANTS", "CondaDependencies", "Definition", "DockerSection", "PythonSection",
                                  "RegistryCredentials", "SparkPackage", "SparkSection", "Variant", "VariantOverride"),
    "envcache.definition.reference": ("definition_from_dict", "definition_to_dict"),
}
from envcache.definition.model import FORMATS  # the CLI's --format choices, without loading a parser

_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "CANONICAL_VERSION", "FORMATS", "VARIANTS", "CondaDependencies", "Definition", "DockerSection", "PythonSection",
    "RegistryCredentials", "SparkPackage", "SparkSection", "Variant", "VariantOverride", "base_reference",
    "canonical_bytes",
    "canonical_form", "definition_from_dict", "definition_to_dict", "for_variant", "load_definition",
    "read_azure_dir", "resolve_variant", "spec_hash", "write_azure_dir",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'envcache.definition' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # static checkers and IDEs see the real names
    from envcache.definition.azure import read_azure_dir, write_azure_dir
    from envcache.definition.canonical import CANONICAL_VERSION, base_reference, canonical_bytes, canonical_form, spec_hash
    from envcache.definition.loaders import load_definition
    from envcache.definition.model import (
        VARIANTS, CondaDependencies, Definition, DockerSection, PythonSection, RegistryCredentials, SparkPackage,
        SparkSection, Variant, VariantOverride,
    )
    from envcache.definition.variants import for_variant, resolve_variant
    from envcache.definition.reference import definition_from_dict, definition_to_dict
