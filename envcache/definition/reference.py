"""envcache's own definition format (YAML or JSON): a mapping that mirrors the model 1:1.

Validation is strict because a typo that is silently ignored (``pip_pacakges``) gives a wrong
environment *and* a wrong cache hit: unknown fields are errors naming the field path and the
valid names; every package entry is parsed here so a bad one is reported with its location.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from envcache.errors import DefinitionError
from envcache.definition.canonical import (
    canonical_channel, canonical_conda_package, canonical_image_ref, canonical_pip_option, canonical_registry_address,
    parse_pip_requirement,
)
from envcache.definition.model import (
    VARIANTS, Definition, SparkPackage, VariantOverride, redact_url_credentials,
)

Locator = Callable[[str], str | None]

# Entry checks by the name of the field or list they sit in: the same helpers the canonical form uses.
_ENTRY_CHECKS: dict[str, Callable[[str], object]] = {
    "channels": canonical_channel,
    "conda_packages": canonical_conda_package,
    "pip_packages": parse_pip_requirement,
    "pip_options": canonical_pip_option,
    "address": canonical_registry_address,
}
_IMAGE_FIELDS = {"base_image"}


class _Reader:
    """Builds dataclasses from plain data, keeping the field path for messages."""

    def __init__(self, source: str, locate: Locator | None) -> None:
        self.source = source
        self.locate = locate or (lambda path: None)

    def fail(self, path: str, message: str) -> DefinitionError:
        line = self.locate(path)
        location = f"{line} ({path})" if line and path else (line or path or None)
        return DefinitionError(message, source=self.source, location=location)

    def build(self, cls: type, data: Any, path: str) -> Any:
        if not isinstance(data, Mapping):
            raise self.fail(path, f"expected a mapping of {', '.join(f.name for f in dataclasses.fields(cls))}, "
                                  f"got {_kind(data)}")
        hints = _hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        values: dict[str, Any] = {}
        for key, value in data.items():
            child = f"{path}.{key}" if path else str(key)
            if key not in names:
                raise self.fail(child, f"unknown field {key!r}; valid fields here: {', '.join(names)}")
            values[key] = self.value(hints[key], value, child, key)
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in values]
        if missing:
            raise self.fail(path, f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                                  f"(needs {', '.join(required)})")
        return cls(**values)

    def value(self, hint: Any, data: Any, path: str, key: str) -> Any:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            if data is None and type(None) in args:
                return None
            (hint,) = [a for a in args if a is not type(None)]
            return self.value(hint, data, path, key)
        if dataclasses.is_dataclass(hint):
            if hint is SparkPackage and isinstance(data, str):
                return self.spark_coordinate(data, path)
            return self.build(hint, data, path)
        if hint is bool:
            if not isinstance(data, bool):
                raise self.fail(path, f"expected true or false, got {_kind(data)}")
            return data
        if hint is str:
            return self.scalar(data, path, key)
        if origin is list:
            if not isinstance(data, list):
                raise self.fail(path, f"expected a list, got {_kind(data)}")
            return [self.value(args[0], item, f"{path}[{i}]", key) for i, item in enumerate(data)]
        if origin is dict:
            if not isinstance(data, Mapping):
                raise self.fail(path, f"expected a mapping, got {_kind(data)}")
            if args[1] is VariantOverride:
                for name in data:
                    if name not in VARIANTS:
                        raise self.fail(f"{path}.{name}", f"unknown variant {name!r}; valid variants: {', '.join(VARIANTS)}")
            # Keys are user names here (variables, variants): never the field names that pick a check.
            return {str(k): self.value(args[1], v, f"{path}.{k}", "") for k, v in data.items()}
        raise AssertionError(f"unhandled type {hint!r}")  # pragma: no cover - model/reader mismatch

    def scalar(self, data: Any, path: str, key: str) -> str:
        # Whole numbers are accepted where a string is meant (``version: 2``, ``OMP_NUM_THREADS: 4``);
        # booleans and decimals are not: YAML turns ``yes`` into true and ``1.10`` into 1.1 behind
        # the user's back, and hashing the mangled value would be silently wrong.
        if isinstance(data, (bool, float)) or not isinstance(data, (str, int)):
            hint = " (quote it)" if isinstance(data, (bool, float)) else ""
            raise self.fail(path, f"expected a string, got {_kind(data)}{hint}")
        text = str(data)
        check = _ENTRY_CHECKS.get(key)
        try:
            if check is not None:
                check(text)
            if key in _IMAGE_FIELDS:
                canonical_image_ref(text)
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None
        return text

    def spark_coordinate(self, data: str, path: str) -> SparkPackage:
        parts = data.strip().split(":")
        if len(parts) != 3 or not all(parts):
            raise self.fail(path, f"Spark package {data!r} must be 'group:artifact:version' or a mapping")
        return SparkPackage(*parts)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _kind(data: Any) -> str:
    if data is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", str: f"the string {data!r}", bool: f"{str(data).lower()}"}.get(
        type(data), f"{type(data).__name__} {data!r}")


def definition_from_dict(data: Any, source: str = "<api>", *, locate: Locator | None = None) -> Definition:
    """Build and validate a :class:`Definition` from envcache's own mapping.

    ``locate`` maps a field path to a line (``"line 12"``) when the mapping came from a file.
    """
    reader = _Reader(source, locate)
    defn = reader.build(Definition, data if data is not None else {}, "")
    check_consistency(defn, reader.fail)
    return defn


def check_consistency(defn: Definition, fail: Callable[[str, str], DefinitionError]) -> None:
    """Rules that span fields."""
    if defn.docker.base_image is not None and defn.docker.base_dockerfile is not None:
        raise fail("docker", "set either base_image or base_dockerfile, not both (a Dockerfile has its own FROM)")
    for name, override in defn.variants.items():
        if override.base_image is not None and override.base_dockerfile is not None:
            raise fail(f"variants.{name}", "set either base_image or base_dockerfile, not both")


def definition_to_dict(defn: Definition, *, redact: bool = False) -> dict[str, Any]:
    """The inverse of :func:`definition_from_dict`, every field written out.

    ``redact=True`` drops the registry password and URL credentials, for anything that is shown
    or stored where a secret must not be (logs, API listings).
    """
    data = dataclasses.asdict(defn)
    if redact:
        data["docker"]["base_image_registry"]["password"] = None
        deps = data["python"]["conda_dependencies"]
        for key in ("channels", "pip_options", "pip_packages"):
            deps[key] = [redact_url_credentials(v) for v in deps[key]]
        data["spark"]["repositories"] = [redact_url_credentials(v) for v in data["spark"]["repositories"]]
    data["variants"] = {
        name: {k: v for k, v in body.items() if v not in (None, [])} for name, body in data["variants"].items()}
    return data

