"""The sections of an Azure ML ``Environment`` — ``python``, ``docker``, ``spark`` — and the
``ContainerRegistry`` a private base image comes from, with Azure's attribute names.

They behave as Azure's do where code depends on it: ``base_image`` and ``base_dockerfile``
exclude each other, ``base_dockerfile`` takes the text, a file path or an open file, and
``base_image_registry`` is a ``ContainerRegistry`` whose fields are set one by one. Each section
turns into its part of envcache's definition document (``to_dict``) only when the daemon is
called, where the definition layer validates it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envcache.client.conda_dependencies import CondaDependencies
from envcache.errors import InvalidInput, UnsupportedFeature
from envcache.definition.model import DEFAULT_INTERPRETER_PATH, RegistryCredentials, SparkPackage

__all__ = ["ContainerRegistry", "DockerSection", "PythonSection", "SparkPackage", "SparkSection"]

# Dockerfile text starts with FROM, ARG (before FROM) or a comment / parser directive.
_DOCKERFILE_START = re.compile(r"\s*(FROM|ARG)\s|\s*#", re.IGNORECASE)


class ContainerRegistry(RegistryCredentials):
    """Azure's ``ContainerRegistry``: the ``address`` of the registry a base image comes from and
    the ``username``/``password`` to pull it (envcache's ``docker.base_image_registry``; the daemon
    never stores the credentials). ``ContainerRegistry()`` and then setting fields, as in Azure."""


@dataclass
class PythonSection:
    """Azure's ``python`` section. ``conda_dependencies`` may be None, as in Azure."""

    conda_dependencies: CondaDependencies | None = field(default_factory=CondaDependencies)
    user_managed_dependencies: bool = False
    interpreter_path: str = DEFAULT_INTERPRETER_PATH

    def to_dict(self) -> dict[str, Any]:
        deps = self.conda_dependencies if self.conda_dependencies is not None else CondaDependencies()
        return {"conda_dependencies": deps.to_dict(), "user_managed_dependencies": self.user_managed_dependencies,
                "interpreter_path": self.interpreter_path}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PythonSection:
        return cls(CondaDependencies.from_dict(data.get("conda_dependencies") or {}),
                   bool(data.get("user_managed_dependencies", False)),
                   data.get("interpreter_path") or DEFAULT_INTERPRETER_PATH)


class DockerSection:
    """Azure's ``docker`` section. ``base_image = None`` (and no Dockerfile) means the daemon's
    base image for the variant, where Azure would use its own default image.

    ``enabled``, ``shared_volumes``, ``shm_size`` and ``arguments`` say how a container is run;
    they are kept for round-trips and not hashed. ``gpu_support`` is deprecated in Azure (always
    True, setting it does nothing) and so here: envcache picks GPU images by variant.
    """

    def __init__(self) -> None:
        self._base_image: str | None = None
        self._base_dockerfile: str | None = None
        self._base_image_registry = ContainerRegistry()
        self.enabled = False
        self.shared_volumes = True
        self.shm_size: str | None = None
        self.arguments: list[str] = []

    @property
    def base_image(self) -> str | None:
        return self._base_image

    @base_image.setter
    def base_image(self, value: str | None) -> None:
        self._base_image = value or None
        if value:
            self._base_dockerfile = None

    @property
    def base_dockerfile(self) -> str | None:
        return self._base_dockerfile

    @base_dockerfile.setter
    def base_dockerfile(self, value: str | os.PathLike[str] | Any | None) -> None:
        self._base_dockerfile = _dockerfile_text(value) if value else None
        if value:
            self._base_image = None

    @property
    def base_image_registry(self) -> ContainerRegistry:
        return self._base_image_registry

    @base_image_registry.setter
    def base_image_registry(self, value: RegistryCredentials | str | None) -> None:
        """A ``ContainerRegistry``; a string is taken as its address (as Azure's how-to writes it)."""
        if value is None or isinstance(value, str):
            self._base_image_registry = ContainerRegistry(address=value or None)
        elif isinstance(value, RegistryCredentials):
            self._base_image_registry = ContainerRegistry(value.address, value.username, value.password)
        else:
            raise InvalidInput(f"docker.base_image_registry: expected a ContainerRegistry or a registry address, "
                               f"got {type(value).__name__}")

    @property
    def build_context(self) -> None:
        return None

    @build_context.setter
    def build_context(self, value: Any) -> None:
        if value is not None:
            raise UnsupportedFeature("DockerSection.build_context (a Docker build context uploaded to Azure storage) "
                                     "is not provided by envcache: write the steps into docker.base_dockerfile")

    @property
    def gpu_support(self) -> bool:
        return True

    @gpu_support.setter
    def gpu_support(self, _value: bool) -> None:
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"base_image": self.base_image, "base_dockerfile": self.base_dockerfile,
                "base_image_registry": dataclasses.asdict(self.base_image_registry), "shm_size": self.shm_size,
                "arguments": list(self.arguments), "shared_volumes": self.shared_volumes, "enabled": self.enabled}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DockerSection:
        docker = cls()
        docker.base_image, docker.base_dockerfile = data.get("base_image"), data.get("base_dockerfile")
        docker.base_image_registry = ContainerRegistry(**(data.get("base_image_registry") or {}))
        docker.shm_size, docker.arguments = data.get("shm_size"), list(data.get("arguments") or [])
        docker.shared_volumes, docker.enabled = bool(data.get("shared_volumes", True)), bool(data.get("enabled", False))
        return docker


def _dockerfile_text(value: Any) -> str:
    """Azure's rule: an object with ``read()`` is read, an existing file path is read, any other
    string is the Dockerfile itself. A one-line string that is no Dockerfile (``"./Dockerfile"``
    with no such file) is refused here rather than failing later as a build of that line."""
    read = getattr(value, "read", None)
    if callable(read):
        text = read()
        return text.decode("utf-8") if isinstance(text, bytes) else str(text)
    if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
        return Path(value).read_text(encoding="utf-8")
    if not isinstance(value, str):
        raise InvalidInput(f"docker.base_dockerfile: expected the Dockerfile text, a file path or a file, "
                           f"got {type(value).__name__}")
    if "\n" not in value.strip() and not _DOCKERFILE_START.match(value):
        raise InvalidInput(f"docker.base_dockerfile: {value!r} is neither an existing file nor Dockerfile text "
                           "(which starts with FROM or ARG)")
    return value


@dataclass
class SparkSection:
    """Azure's ``spark`` section. ``packages`` holds ``SparkPackage(group, artifact, version)``
    objects as in Azure; mappings and ``"group:artifact:version"`` strings are accepted too."""

    repositories: list[str] = field(default_factory=list)
    packages: list[SparkPackage | dict[str, str] | str] = field(default_factory=list)
    precache_packages: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"repositories": list(self.repositories), "packages": [_package(p) for p in self.packages],
                "precache_packages": self.precache_packages}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparkSection:
        packages = [SparkPackage(**p) if isinstance(p, dict) else p for p in data.get("packages") or []]
        return cls(list(data.get("repositories") or []), packages, bool(data.get("precache_packages", True)))


def _package(package: Any) -> dict[str, str] | str:
    if isinstance(package, SparkPackage):
        return dataclasses.asdict(package)
    if isinstance(package, (dict, str)):
        return package
    raise InvalidInput(f"spark.packages: expected SparkPackage(group, artifact, version), got {type(package).__name__}")
