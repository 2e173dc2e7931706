"""``load_definition``: pick the format from the path (or ``format=``) and load it.

Detection, in order: a directory or ``azureml_environment.json`` → Azure ML directory;
``*.txt`` → requirements; ``*.json`` → envcache JSON; ``*.yml``/``*.yaml`` whose top level has
``dependencies`` → conda (``prefix`` or pinned builds → conda env export), else envcache YAML.
"""

from __future__ import annotations

from pathlib import Path

from envcache.errors import DefinitionError
from envcache.definition.azure import ENV_JSON, read_azure_dir
from envcache.definition.conda_env import load_conda_env
from envcache.definition.model import FORMATS, Definition
from envcache.definition.reference import definition_from_dict
from envcache.definition.requirements import load_requirements
from envcache.definition.sources import Located, load_json, load_yaml


def detect_format(path: Path) -> tuple[str, Located | None]:
    """The format, and for YAML the file as loaded to tell which (so it is not parsed twice)."""
    if path.is_dir() or path.name == ENV_JSON:
        return "azure-dir", None
    suffix = path.suffix.lower()
    if suffix == ".txt" or path.name.startswith("requirements"):
        return "requirements", None
    if suffix == ".json":
        return "json", None
    if suffix in (".yml", ".yaml"):
        located = load_yaml(path)
        data = located.data
        if isinstance(data, dict) and "dependencies" in data:
            return ("conda-export" if "prefix" in data else "conda"), located
        return "yaml", located
    if not path.exists():
        raise DefinitionError("file not found", source=str(path))
    raise DefinitionError(f"cannot tell the format from the name; pass --format ({', '.join(FORMATS)})",
                          source=str(path))


def load_definition(path: Path | str, format: str | None = None) -> Definition:  # noqa: A002 - the CLI flag's name
    """Load a definition in any supported format; raises DefinitionError naming file and line."""
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise DefinitionError(f"unknown format {format!r}; valid formats: {', '.join(FORMATS)}", location="--format")
    if not path.exists():
        raise DefinitionError("file not found", source=str(path))
    kind, located = (format, None) if format else detect_format(path)
    if kind == "azure-dir":
        return read_azure_dir(path)
    if path.is_dir():
        raise DefinitionError(f"is a directory; format {kind!r} needs a file", source=str(path))
    if kind == "requirements":
        return load_requirements(path)
    if kind in ("conda", "conda-export"):
        return load_conda_env(path, located)
    if located is None:
        located = load_json(path) if kind == "json" else load_yaml(path)
    return definition_from_dict(located.data, source=located.source, locate=located.locate)
