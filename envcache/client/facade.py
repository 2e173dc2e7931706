"""An Azure ML-style facade: code written against ``azureml.core.Environment`` ports by
changing imports and passing an envcache client where Azure took a workspace.

    from envcache import Client, CondaDependencies, Environment

    env = Environment("train")
    env.python.conda_dependencies = CondaDependencies()
    env.python.conda_dependencies.add_pip_package("scikit-learn==1.5.0")
    env.register(client)
    env.build(client).wait_for_completion(show_output=True)

Objects here are plain, mutable and offline; only ``register``/``get``/``list``/``build``/
``get_image_details`` talk to the daemon. They convert to and from envcache's definition
document, so everything the daemon accepts round-trips through them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envcache import definition as spec
from envcache.client.sync import Client
from envcache.definition.model import DEFAULT_INTERPRETER_PATH
from envcache.errors import EnvcacheError, InvalidInput

ClientLike = Client | str | None


def _client(client: ClientLike) -> Client:
    """Where Azure takes a Workspace we take a Client (or a daemon URL, or None for the default)."""
    return client if isinstance(client, Client) else Client(client)


def _name_of(entry: str) -> str:
    """The package name of a conda/pip spec (``numpy>=1.2`` → ``numpy``), for replace/remove."""
    for stop in "=<>!~[ ;@":
        entry = entry.split(stop, 1)[0]
    return entry.split("::")[-1].strip().lower().replace("_", "-")


class CondaDependencies:
    """Azure's ``CondaDependencies``: channels, conda packages, pip packages and pip options."""

    def __init__(self, conda_packages: Iterable[str] = (), pip_packages: Iterable[str] = (),
                 channels: Iterable[str] = (), pip_options: Iterable[str] = ()) -> None:
        self._channels: list[str] = []
        self._conda: list[str] = []
        self._pip: list[str] = []
        self._pip_options: list[str] = []
        for channel in channels:
            self.add_channel(channel)
        for package in conda_packages:
            self.add_conda_package(package)
        for package in pip_packages:
            self.add_pip_package(package)
        for option in pip_options:
            self.set_pip_option(option)

    @classmethod
    def create(cls, pip_packages: Iterable[str] | None = None, conda_packages: Iterable[str] | None = None,
               python_version: str | None = None, pip_indexurl: str | None = None,
               channels: Iterable[str] | None = None) -> CondaDependencies:
        """Azure's factory. Unlike Azure it adds nothing you did not ask for (no azureml-defaults)."""
        conda = list(conda_packages or [])
        if python_version:
            conda.insert(0, f"python={python_version}")
        deps = cls(conda_packages=conda, pip_packages=pip_packages or [], channels=channels or [])
        if pip_indexurl:
            deps.set_pip_option(f"--index-url {pip_indexurl}")
        return deps

    def add_conda_package(self, conda_package: str) -> None:
        """Add (or replace the entry of the same name)."""
        self._conda = [p for p in self._conda if _name_of(p) != _name_of(conda_package)] + [conda_package]

    def add_pip_package(self, pip_package: str) -> None:
        self._pip = [p for p in self._pip if _name_of(p) != _name_of(pip_package)] + [pip_package]

    def add_channel(self, channel: str) -> None:
        if channel not in self._channels:
            self._channels.append(channel)

    def set_pip_option(self, pip_option: str) -> None:
        """Add a pip option; one with the same flag (``--index-url``) replaces the old one."""
        flag = pip_option.split()[0].split("=")[0]
        self._pip_options = [o for o in self._pip_options if o.split()[0].split("=")[0] != flag] + [pip_option]

    def remove_conda_package(self, conda_package: str) -> None:
        self._conda = [p for p in self._conda if _name_of(p) != _name_of(conda_package)]

    def remove_pip_package(self, pip_package: str) -> None:
        self._pip = [p for p in self._pip if _name_of(p) != _name_of(pip_package)]

    def remove_channel(self, channel: str) -> None:
        self._channels = [c for c in self._channels if c != channel]

    @property
    def conda_packages(self) -> list[str]:
        return list(self._conda)

    @property
    def pip_packages(self) -> list[str]:
        return list(self._pip)

    @property
    def conda_channels(self) -> list[str]:
        return list(self._channels)

    @property
    def pip_options(self) -> list[str]:
        return list(self._pip_options)

    def to_dict(self) -> dict[str, list[str]]:
        return {"channels": self.conda_channels, "conda_packages": self.conda_packages,
                "pip_packages": self.pip_packages, "pip_options": self.pip_options}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CondaDependencies:
        return cls(data.get("conda_packages", []), data.get("pip_packages", []), data.get("channels", []),
                   data.get("pip_options", []))

    def __repr__(self) -> str:
        return f"CondaDependencies(conda={self._conda!r}, pip={self._pip!r}, channels={self._channels!r})"


# The sections mirror Azure's attribute names and hold the facade's mutable CondaDependencies;
# they are converted to envcache's definition document (spec.model's sections) at the daemon calls.
@dataclass
class PythonSection:
    conda_dependencies: CondaDependencies = field(default_factory=CondaDependencies)
    user_managed_dependencies: bool = False
    interpreter_path: str = DEFAULT_INTERPRETER_PATH


@dataclass
class DockerSection:
    base_image: str | None = None
    base_dockerfile: str | None = None
    shm_size: str | None = None
    arguments: list[str] = field(default_factory=list)


@dataclass
class SparkSection:
    repositories: list[str] = field(default_factory=list)
    packages: list[dict[str, str]] = field(default_factory=list)  # {group, artifact, version}
    precache_packages: bool = True


class ImageBuildDetails:
    """What ``Environment.build`` returns: follow it with ``wait_for_completion``."""

    def __init__(self, client: Client, answer: dict[str, Any]) -> None:
        self._client = client
        self._answer = answer
        self.status = "Succeeded" if answer["status"] == "hit" else "Running"
        self.image_details: dict[str, Any] | None = answer.get("image")
        self.build_id: str | None = answer["build"]["id"] if answer.get("build") else None
        self.log: list[str] = []

    def wait_for_completion(self, show_output: bool = False) -> dict[str, Any]:
        """Block until the image exists; stream the build log to stdout when ``show_output``.

        Returns the image details; raises :class:`~envcache.errors.EnvcacheError` if the build failed.
        """
        if self.build_id is not None:
            build = self._client.follow_build(self.build_id, on_log=lambda line: self._log(line, show_output))
            self.status = "Succeeded" if build["state"] == "succeeded" else "Failed"
            if self.status == "Failed":
                raise EnvcacheError(f"image build {self.build_id} failed: {build['error']}")
            self.image_details = build["image"]
        elif show_output:
            print(f"image already cached: {self.image_details['image']}", flush=True)  # type: ignore[index]
        assert self.image_details is not None
        return self.image_details

    def _log(self, line: str, show_output: bool) -> None:
        self.log.append(line)
        if show_output:
            print(line, flush=True)

    def get_log(self) -> list[str]:
        return list(self.log)


class Environment:
    """Azure's ``Environment``: a named definition with python, docker and spark sections."""

    def __init__(self, name: str, version: int | None = None) -> None:
        self.name = name
        self.version = version
        self.python = PythonSection()
        self.docker = DockerSection()
        self.spark = SparkSection()
        self.environment_variables: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Environment(name={self.name!r}, version={self.version!r})"

    # ---- definition document round-trip --------------------------------------------------

    def to_definition_dict(self) -> dict[str, Any]:
        """envcache's definition document (what the daemon and ``envcache hash`` take)."""
        deps = self.python.conda_dependencies
        return {
            "name": self.name,
            "python": {"conda_dependencies": deps.to_dict() if deps is not None else CondaDependencies().to_dict(),
                       "user_managed_dependencies": self.python.user_managed_dependencies,
                       "interpreter_path": self.python.interpreter_path},
            "docker": {"base_image": self.docker.base_image, "base_dockerfile": self.docker.base_dockerfile,
                       "shm_size": self.docker.shm_size, "arguments": list(self.docker.arguments)},
            "spark": {"repositories": list(self.spark.repositories),
                      "packages": [dict(p) for p in self.spark.packages],
                      "precache_packages": self.spark.precache_packages},
            "environment_variables": dict(self.environment_variables),
        }

    @classmethod
    def _from_definition_dict(cls, name: str, data: dict[str, Any], version: int | None = None) -> Environment:
        env = cls(name, version)
        python = data.get("python") or {}
        env.python = PythonSection(CondaDependencies.from_dict(python.get("conda_dependencies") or {}),
                                   bool(python.get("user_managed_dependencies", False)),
                                   python.get("interpreter_path") or DEFAULT_INTERPRETER_PATH)
        docker = data.get("docker") or {}
        env.docker = DockerSection(docker.get("base_image"), docker.get("base_dockerfile"), docker.get("shm_size"),
                                   list(docker.get("arguments") or []))
        spark = data.get("spark") or {}
        env.spark = SparkSection(list(spark.get("repositories") or []), list(spark.get("packages") or []),
                                 bool(spark.get("precache_packages", True)))
        env.environment_variables = dict(data.get("environment_variables") or {})
        return env

    @classmethod
    def _from_spec(cls, name: str, definition: spec.Definition) -> Environment:
        return cls._from_definition_dict(name, spec.definition_to_dict(definition))

    # ---- constructors from files ---------------------------------------------------------

    @classmethod
    def from_conda_specification(cls, name: str, file_path: str | Path) -> Environment:
        """From a conda ``environment.yml`` (channels, dependencies, nested ``pip:``)."""
        return cls._from_spec(name, spec.load_definition(file_path, format="conda"))

    @classmethod
    def from_pip_requirements(cls, name: str, file_path: str | Path, pip_version: str | None = None) -> Environment:
        """From a pip ``requirements.txt`` (``-r`` includes, index options, markers…)."""
        env = cls._from_spec(name, spec.load_definition(file_path, format="requirements"))
        if pip_version:
            env.python.conda_dependencies.add_conda_package(f"pip={pip_version}")
        return env

    @classmethod
    def from_existing_conda_environment(cls, name: str, conda_environment_name: str) -> Environment:
        """From an installed conda environment (a name under the conda envs dirs, or a prefix path).

        Reads the environment's ``conda-meta`` records (what ``conda env export`` reads) and the
        pip-installed distributions in it, pinning exact versions as Azure does.
        """
        prefix = _find_conda_prefix(conda_environment_name)
        deps = CondaDependencies()
        for record in sorted((prefix / "conda-meta").glob("*.json")):
            meta = json.loads(record.read_text(encoding="utf-8"))
            deps.add_conda_package(f"{meta['name']}=={meta['version']}={meta['build']}")
            channel = (meta.get("channel") or "").rstrip("/").rsplit("/", 1)[-1]
            if channel and channel not in ("pypi", "<unknown>"):
                deps.add_channel(channel)
        for installer in prefix.glob("lib/python*/site-packages/*.dist-info/INSTALLER"):
            if installer.read_text(encoding="utf-8").strip() == "pip":
                from email.parser import Parser  # ~10 ms to import: only here, where it is needed

                info = Parser().parsestr((installer.parent / "METADATA").read_text(encoding="utf-8"), headersonly=True)
                deps.add_pip_package(f"{info['Name']}=={info['Version']}")
        env = cls(name)
        env.python.conda_dependencies = deps
        return env

    # ---- daemon operations ---------------------------------------------------------------

    def register(self, client: ClientLike = None) -> Environment:
        """Register this definition; a new version only if its content changed. Returns the stored version."""
        answer = _client(client).register_environment(self.name, self.to_definition_dict())
        record = answer["environment"]
        self.version = record["version"]
        return Environment._from_definition_dict(record["name"], record["definition"], record["version"])

    @staticmethod
    def get(client: ClientLike, name: str, version: int | None = None) -> Environment:
        """A registered (or curated) environment; the latest version when ``version`` is None."""
        record = _client(client).environment(name, version)
        return Environment._from_definition_dict(record["name"], record["definition"], record["version"])

    @staticmethod
    def list(client: ClientLike = None) -> dict[str, Environment]:
        """The latest version of every environment, by name (as Azure's ``Environment.list``)."""
        records = _client(client).environments()["environments"]
        return {r["name"]: Environment._from_definition_dict(r["name"], r["definition"], r["version"]) for r in records}

    def build(self, client: ClientLike = None, variant: str = "auto") -> ImageBuildDetails:
        """Ensure the image exists: a hit returns at once, a miss starts (or joins) the build."""
        connected = _client(client)
        return ImageBuildDetails(connected, connected.ensure(self.to_definition_dict(), variant))

    def get_image_details(self, client: ClientLike = None, variant: str = "auto") -> dict[str, Any]:
        """The cached image's details, with Azure's ``dockerImage`` keys alongside envcache's."""
        image = _client(client).resolve(self.to_definition_dict(), variant)
        if image is None:
            return {"imageExistsInRegistry": False, "dockerImage": None}
        image = image["image"]
        host, _, name = image["image"].partition("/")
        return {**image, "imageExistsInRegistry": True,
                "dockerImage": {"name": name, "registry": {"address": host}, "digest": image["digest"]}}

    def save_to_directory(self, path: str | Path, overwrite: bool = False) -> None:
        """Write the Azure ML directory layout (``azureml_environment.json`` …), offline."""
        out = Path(path)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise InvalidInput(f"{out} is not empty (pass overwrite=True)")
        definition = spec.definition_from_dict(self.to_definition_dict(), source=f"Environment {self.name}")
        definition.version = None if self.version is None else str(self.version)
        spec.write_azure_dir(definition, out)

    @classmethod
    def load_from_directory(cls, path: str | Path) -> Environment:
        definition = spec.load_definition(path, format="azure-dir")
        return cls._from_spec(definition.name or Path(path).name, definition)


def _find_conda_prefix(name_or_path: str) -> Path:
    candidate = Path(name_or_path).expanduser()
    if (candidate / "conda-meta").is_dir():
        return candidate
    roots = [os.environ.get("CONDA_PREFIX"), os.environ.get("CONDA_ROOT"), os.environ.get("MAMBA_ROOT_PREFIX"),
             "~/.conda", "~/miniconda3", "~/anaconda3", "~/miniforge3", "/opt/conda"]
    for root in filter(None, roots):
        prefix = Path(root).expanduser() / "envs" / name_or_path
        if (prefix / "conda-meta").is_dir():
            return prefix
    raise InvalidInput(f"no conda environment named {name_or_path!r} (looked in the conda envs directories); "
                       "pass the environment's prefix path instead")
