"""The Azure ML environment directory: ``azureml_environment.json`` (camelCase, as
``Environment.save_to_directory`` and ``az ml environment scaffold/download`` write it),
``conda_dependencies.yml`` and an optional ``BaseDockerfile`` — read and written.

Azure's format has no variants. A definition with them gets one envcache file beside Azure's,
``envcache_variants.yml`` (the ``variants`` mapping of envcache's own format), so a registered
environment downloads and loads back whole; Azure's tools ignore a file they do not know.

Azure fields envcache has no use for (``databricks``, ``r``, ``platform`` …) are accepted when
they hold Azure's defaults and rejected otherwise: ignoring a non-default one would cache an
image that is not what the user asked for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from envcache.errors import DefinitionError
from envcache.definition.conda_env import conda_dependencies_from_yaml, conda_env_to_dict
from envcache.definition.files import atomic_write
from envcache.definition.model import Definition
from envcache.definition.reference import definition_from_dict, definition_to_dict
from envcache.definition.sources import Located, load_json, load_yaml, read_text

ENV_JSON = "azureml_environment.json"
CONDA_YML = "conda_dependencies.yml"
DOCKERFILE = "BaseDockerfile"
VARIANTS_YML = "envcache_variants.yml"
_VARIANTS_HEADER = ("# envcache extension: per-variant overrides (README, \"The definition format\"). Azure ML has\n"
                    "# no variants; envcache reads this file beside azureml_environment.json.\n\n")

# Per section: fields that map onto the model, and fields tolerated only with their default.
_FIELDS: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    "": ({"name": "name", "version": "version", "description": "description", "python": "python",
          "docker": "docker", "spark": "spark", "environmentVariables": "environment_variables"},
         {"databricks": None, "r": None, "inferencingStackVersion": None, "assetId": "*"}),
    "python": ({"userManagedDependencies": "user_managed_dependencies", "interpreterPath": "interpreter_path"},
               {"condaDependenciesFile": "*", "baseCondaEnvironment": None, "condaDependencies": "*"}),
    "docker": ({"baseImage": "base_image", "baseDockerfile": "base_dockerfile", "baseImageRegistry": "base_image_registry",
                "shmSize": "shm_size", "arguments": "arguments", "sharedVolumes": "shared_volumes", "enabled": "enabled"},
               {"platform": {"os": "Linux", "architecture": "amd64"}, "buildContext": None}),
    "docker.baseImageRegistry": ({"address": "address", "username": "username", "password": "password"},
                                 {"registryIdentity": None}),
    "spark": ({"repositories": "repositories", "packages": "packages", "precachePackages": "precache_packages"}, {}),
}
_EMPTY_DATABRICKS = {"mavenLibraries": [], "pypiLibraries": [], "rcranLibraries": [], "jarLibraries": [], "eggLibraries": []}


def read_azure_dir(path: Path) -> Definition:
    """Load an Azure ML environment directory (or its ``azureml_environment.json``)."""
    if path.is_file() and path.name != ENV_JSON:
        raise DefinitionError(f"an Azure ML environment is a directory (or its {ENV_JSON}), not this file",
                              source=str(path))
    directory = path.parent if path.is_file() else path
    json_path = directory / ENV_JSON
    if not json_path.is_file():
        raise DefinitionError(f"not an Azure ML environment directory: {ENV_JSON} is missing", source=str(directory))
    located = load_json(json_path)
    source = str(json_path)
    data = located.data
    if not isinstance(data, dict):
        raise DefinitionError("expected a JSON object", source=source)
    converted = _convert(data, "", source)
    python = data.get("python") or {}
    if not isinstance(python, dict):
        raise DefinitionError("expected an object", source=source, location="python")
    deps_file = python.get("condaDependenciesFile") or CONDA_YML
    conda_path = directory / deps_file
    inline = python.get("condaDependencies")
    if conda_path.is_file() and inline:
        raise DefinitionError(f"conda dependencies given twice: python.condaDependencies and {deps_file}", source=source)
    definition = definition_from_dict(converted, source=source)
    if conda_path.is_file():
        conda_located = load_yaml(conda_path)
    elif inline:
        conda_located = Located(inline, {}, f"{source} (python.condaDependencies)")
    else:
        conda_located = None
    if conda_located is not None:
        deps, variables, _ = conda_dependencies_from_yaml(conda_located, directory)
        if variables:
            raise DefinitionError("set environment variables in environmentVariables, not in the conda file",
                                  source=conda_located.source, location="variables")
        definition.python.conda_dependencies = deps
    dockerfile = directory / DOCKERFILE
    if dockerfile.is_file():
        if definition.docker.base_dockerfile is not None:
            raise DefinitionError(f"base Dockerfile given twice: docker.baseDockerfile and {DOCKERFILE}", source=source)
        if definition.docker.base_image is not None:
            raise DefinitionError(f"set either docker.baseImage or a {DOCKERFILE}, not both", source=source)
        definition.docker.base_dockerfile = read_text(dockerfile)
    if (directory / VARIANTS_YML).is_file():
        definition.variants = _read_variants(directory / VARIANTS_YML)
    return definition


def _read_variants(path: Path) -> dict[str, Any]:
    """The overrides in ``envcache_variants.yml``, checked as the ``variants`` of envcache's format."""
    located = load_yaml(path)
    return definition_from_dict({"variants": located.data}, source=located.source,
                                locate=lambda field: located.locate(field.removeprefix("variants."))).variants


def _convert(data: dict[str, Any], section: str, source: str) -> dict[str, Any]:
    """camelCase Azure section → envcache reference mapping, rejecting what we cannot honour."""
    mapped, tolerated = _FIELDS[section]
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{section}.{key}" if section else key
        if key in mapped:
            if path in _FIELDS:
                if value is None:
                    continue
                if not isinstance(value, dict):
                    raise DefinitionError("expected an object", source=source, location=path)
                value = _convert(value, path, source)
            out[mapped[key]] = value
        elif key in tolerated:
            default = _EMPTY_DATABRICKS if key == "databricks" else tolerated[key]
            if default != "*" and value is not None and value != default:
                raise DefinitionError(f"Azure field {key!r} is not supported by envcache (only its default "
                                      f"{json.dumps(default)} is accepted)", source=source, location=path)
        else:
            valid = ", ".join([*mapped, *tolerated])
            raise DefinitionError(f"unknown field {key!r}; valid fields here: {valid}", source=source, location=path)
    if section == "" and out.get("version") is not None:
        out["version"] = str(out["version"])
    return out


def write_azure_dir(defn: Definition, out_dir: Path | str) -> None:
    """Write the Azure ML layout (and the variants beside it); ``read_azure_dir`` gives back an
    identical definition."""
    out = Path(out_dir)
    docker = defn.docker
    registry = docker.base_image_registry
    data = {
        "name": defn.name,
        "version": defn.version,
        "environmentVariables": dict(defn.environment_variables),
        "python": {
            "userManagedDependencies": defn.python.user_managed_dependencies,
            "interpreterPath": defn.python.interpreter_path,
            "condaDependenciesFile": None,
            "baseCondaEnvironment": None,
        },
        "docker": {
            "enabled": docker.enabled,
            "baseImage": docker.base_image,
            "baseDockerfile": None,
            "sharedVolumes": docker.shared_volumes,
            "shmSize": docker.shm_size,
            "arguments": list(docker.arguments),
            "baseImageRegistry": {"address": registry.address, "username": registry.username,
                                  "password": registry.password},
        },
        "spark": {
            "repositories": list(defn.spark.repositories),
            "packages": [{"group": p.group, "artifact": p.artifact, "version": p.version} for p in defn.spark.packages],
            "precachePackages": defn.spark.precache_packages,
        },
        "databricks": dict(_EMPTY_DATABRICKS),
        "inferencingStackVersion": None,
    }
    if defn.description is not None:  # not an Azure field: only written when there is one to keep
        data["description"] = defn.description
    conda = conda_env_to_dict(defn.python.conda_dependencies, "project_environment")
    header = ("# Conda environment specification. The dependencies defined in this file will\n"
              "# be automatically provisioned for runs with userManagedDependencies=False.\n\n")
    atomic_write(out / CONDA_YML, header + yaml.safe_dump(conda, sort_keys=False, default_flow_style=False))
    if docker.base_dockerfile is not None:
        atomic_write(out / DOCKERFILE, docker.base_dockerfile)
    else:
        (out / DOCKERFILE).unlink(missing_ok=True)
    if defn.variants:
        variants = definition_to_dict(defn)["variants"]
        atomic_write(out / VARIANTS_YML, _VARIANTS_HEADER + yaml.safe_dump(variants, sort_keys=False))
    else:
        (out / VARIANTS_YML).unlink(missing_ok=True)
    atomic_write(out / ENV_JSON, json.dumps(data, indent=4) + "\n")
