"""conda ``environment.yml`` and ``conda env export`` files.

Both have ``name``, ``channels``, ``dependencies`` (MatchSpecs, plus a nested ``pip:`` list) and
optionally ``variables`` (environment variables) and ``prefix`` (where the environment lived,
not content). Export files pin ``name=version=build``, which MatchSpec reads as an exact build.
Azure's ``conda_dependencies.yml`` is the same format, so the Azure loader uses this too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envcache.errors import DefinitionError
from envcache.definition.canonical import canonical_channel, canonical_conda_package, canonical_pip_option, parse_pip_requirement
from envcache.definition.model import CondaDependencies, Definition, PythonSection
from envcache.definition.requirements import Includes, read_requirements
from envcache.definition.sources import Located, load_yaml

CONDA_FIELDS = ("name", "channels", "dependencies", "variables", "prefix")


def load_conda_env(path: Path, located: Located | None = None) -> Definition:
    """``located``: the file already parsed (by format detection), else it is read here."""
    located = located or load_yaml(path)
    deps, variables, name = conda_dependencies_from_yaml(located, path.parent)
    return Definition(name=name, python=PythonSection(conda_dependencies=deps), environment_variables=variables)


def conda_dependencies_from_yaml(located: Located, base_dir: Path) -> tuple[CondaDependencies, dict[str, str], str | None]:
    """Read a conda environment mapping; ``-r file`` inside ``pip:`` is resolved from ``base_dir``."""
    data = located.data

    def fail(path: str, message: str) -> DefinitionError:
        line = located.locate(path)
        location = f"{line} ({path})" if line else path or None
        return DefinitionError(message, source=located.source, location=location)

    if not isinstance(data, dict):
        raise fail("", "expected a conda environment mapping with channels and dependencies")
    for key in data:
        if key not in CONDA_FIELDS:
            raise fail(str(key), f"unknown field {key!r}; valid fields here: {', '.join(CONDA_FIELDS)}")
    channels = _string_list(data.get("channels"), "channels", fail)
    for index, channel in enumerate(channels):
        _check(canonical_channel, channel, f"channels[{index}]", fail)
    deps = CondaDependencies(channels=channels)
    includes = Includes()  # every ``-r`` of the pip list shares one budget; a file is read once
    raw_deps = data.get("dependencies") or []
    if not isinstance(raw_deps, list):
        raise fail("dependencies", "expected a list of packages")
    for index, entry in enumerate(raw_deps):
        path = f"dependencies[{index}]"
        if isinstance(entry, dict):
            if set(entry) != {"pip"}:
                raise fail(path, f"unknown nested list {', '.join(map(str, entry))!r}; only 'pip:' is supported")
            _read_pip_list(entry["pip"], f"{path}.pip", deps, base_dir, includes, fail)
        elif isinstance(entry, str):
            _check(canonical_conda_package, entry, path, fail)
            deps.conda_packages.append(entry)
        else:
            raise fail(path, f"expected a package spec string, got {'nothing (null)' if entry is None else type(entry).__name__}")
    variables_raw = data.get("variables") or {}
    if not isinstance(variables_raw, dict):
        raise fail("variables", "expected a mapping of environment variables")
    variables = {}
    for key, value in variables_raw.items():
        if isinstance(value, (bool, float)) or not isinstance(value, (str, int)):  # as in reference.py
            raise fail(f"variables.{key}", "expected a string value (quote it)")
        variables[str(key)] = str(value)
    name = data.get("name")
    return deps, variables, str(name) if name is not None else None


def _read_pip_list(entries: Any, path: str, deps: CondaDependencies, base_dir: Path, includes: Includes,
                   fail: Any) -> None:
    if not isinstance(entries, list):
        raise fail(path, "expected a list of pip requirements")
    for index, entry in enumerate(entries):
        where = f"{path}[{index}]"
        if not isinstance(entry, str):
            raise fail(where, f"expected a pip requirement string, got {type(entry).__name__}")
        text = entry.strip()
        option = text.split(None, 1)[0] if text else ""
        included = pip_include(text)
        if included is not None:
            packages, options = read_requirements(base_dir / included, includes)
            deps.pip_packages.extend(packages)
            deps.pip_options.extend(options)
        elif text.startswith("-") and option not in ("-e", "--editable") and not text.startswith("--editable="):
            _check(canonical_pip_option, text, where, fail)
            deps.pip_options.append(text)
        else:
            _check(parse_pip_requirement, text, where, fail)
            deps.pip_packages.append(text)


def pip_include(entry: str) -> str | None:
    """The file a ``pip:`` entry includes (``-r base.txt``, ``--requirement=base.txt``), else None.

    The daemon's check of raw files (:func:`envcache.wire.check_files`) reads entries
    with this same rule, so it sees every file this loader would open.
    """
    text = entry.strip()
    if text.startswith("--requirement="):
        return text.split("=", 1)[1].strip()
    if text.split(None, 1)[:1] in (["-r"], ["--requirement"]):
        return text.split(None, 1)[-1].strip()
    return None


def _string_list(value: Any, path: str, fail: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(path, "expected a list of strings")
    return list(value)


def _check(check: Any, value: str, path: str, fail: Any) -> None:
    try:
        check(value)
    except ValueError as exc:
        raise fail(path, str(exc)) from None


def conda_env_to_dict(deps: CondaDependencies, name: str | None, variables: dict[str, str] | None = None) -> dict[str, Any]:
    """The conda environment mapping (pip options first inside ``pip:``, as Azure writes them)."""
    dependencies: list[Any] = list(deps.conda_packages)
    if deps.pip_packages or deps.pip_options:
        dependencies.append({"pip": list(deps.pip_options) + list(deps.pip_packages)})
    data: dict[str, Any] = {"name": name or "project_environment", "channels": list(deps.channels),
                            "dependencies": dependencies}
    if variables:
        data["variables"] = dict(variables)
    return data
