"""An Azure ML-style facade: code written against ``azureml.core.Environment`` ports by changing
its imports to ``from envcache import …``.

    from envcache import CondaDependencies, Environment, Workspace

    ws = Workspace.from_config()
    env = Environment("train")
    env.python.conda_dependencies = CondaDependencies()
    env.python.conda_dependencies.add_pip_package("scikit-learn==1.5.0")
    env.register(workspace=ws)
    env.build(workspace=ws).wait_for_completion(show_output=True)

Objects here are plain, mutable and offline; only ``register``/``get``/``list``/``build``/
``build_local``/``get_image_details``/``add_private_pip_wheel`` talk to the daemon (``workspace``: see
:mod:`envcache.client.connection`). They convert to and from envcache's definition document, so
everything the daemon accepts round-trips through them. Where Azure has a feature envcache has
not, the call raises :class:`~envcache.errors.UnsupportedFeature` naming it. The differences are
listed in README, "Coming from Azure ML".
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

from envcache import definition as spec
from envcache.client.conda_dependencies import CondaDependencies
from envcache.client.connection import connect
from envcache.client.image_details import DockerImageDetails, ImageBuildDetails
from envcache.client.sections import DockerSection, PythonSection, SparkSection
from envcache.client.sync import Client
from envcache.errors import Conflict, EnvcacheError, InvalidInput, UnsupportedFeature

# How long build_local waits for the daemon's background pushes (each retried with backoff).
PUSH_WAIT_SECONDS = 600.0
_PUSHING = ("queued", "running", "retrying")


class Environment:
    """Azure's ``Environment``: a named definition with ``python``, ``docker`` and ``spark``
    sections and ``environment_variables``. ``version`` is a string, as in Azure (``"1"``)."""

    def __init__(self, name: str, version: str | None = None) -> None:
        self.name = _checked_name(name)
        self.version = version
        self.python = PythonSection()
        self.docker = DockerSection()
        self.spark = SparkSection()
        self.environment_variables: dict[str, str] = {}
        # Azure sections envcache has nothing to build from; setting one makes the daemon calls
        # refuse (see _refuse_unsupported) instead of dropping it silently.
        self.r: Any = None
        self.databricks: Any = None
        self.inferencing_stack_version: str | None = None
        self.asset_id: str | None = None  # Azure's registry id; envcache names versions only

    def __repr__(self) -> str:
        return f"Environment(name={self.name!r}, version={self.version!r})"

    # ---- definition document round-trip --------------------------------------------------

    def to_definition_dict(self) -> dict[str, Any]:
        """envcache's definition document (what the daemon and ``envcache hash`` take)."""
        self._refuse_unsupported()
        return {"name": self.name, "python": self.python.to_dict(), "docker": self.docker.to_dict(),
                "spark": self.spark.to_dict(), "environment_variables": dict(self.environment_variables)}

    def _refuse_unsupported(self) -> None:
        for attribute, feature in (("r", "the R section (R packages)"),
                                   ("databricks", "the Databricks section (Databricks libraries)"),
                                   ("inferencing_stack_version", "Azure's inferencing stack (add your inference "
                                                                 "server, e.g. azureml-inference-server-http, as a "
                                                                 "pip package instead)")):
            if getattr(self, attribute) is not None:
                raise UnsupportedFeature(f"Environment.{attribute}: {feature} is an Azure ML feature envcache does "
                                         f"not provide; set it to None")

    @classmethod
    def _from_definition_dict(cls, name: str, data: dict[str, Any], version: str | None = None) -> Environment:
        env = cls(name, version)
        env.python = PythonSection.from_dict(data.get("python") or {})
        env.docker = DockerSection.from_dict(data.get("docker") or {})
        env.spark = SparkSection.from_dict(data.get("spark") or {})
        env.environment_variables = dict(data.get("environment_variables") or {})
        return env

    @classmethod
    def _from_record(cls, record: dict[str, Any]) -> Environment:
        return cls._from_definition_dict(record["name"], record["definition"], str(record["version"]))

    @classmethod
    def _from_spec(cls, name: str, definition: spec.Definition) -> Environment:
        return cls._from_definition_dict(name, spec.definition_to_dict(definition))

    def clone(self, new_name: str) -> Environment:
        """A copy under ``new_name``, unregistered (no version)."""
        env = copy.deepcopy(self)
        env.name, env.version, env.asset_id = _checked_name(new_name), None, None
        return env

    # ---- constructors --------------------------------------------------------------------

    @classmethod
    def from_conda_specification(cls, name: str, file_path: str | os.PathLike[str]) -> Environment:
        """From a conda ``environment.yml`` (channels, dependencies, nested ``pip:``, variables).
        Unlike Azure, no Python version is added when the file names none."""
        return cls._from_spec(name, spec.load_definition(file_path, format="conda"))

    @classmethod
    def from_pip_requirements(cls, name: str, file_path: str | os.PathLike[str],
                              pip_version: str | None = None) -> Environment:
        """From a pip ``requirements.txt`` (``-r`` includes, index options, markers…). Azure also
        adds a conda ``pip`` package; envcache adds ``pip=<pip_version>`` only when asked."""
        env = cls._from_spec(name, spec.load_definition(file_path, format="requirements"))
        if pip_version:
            env.python.conda_dependencies.add_conda_package(f"pip={pip_version}")  # type: ignore[union-attr]
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

    @classmethod
    def from_dockerfile(cls, name: str, dockerfile: str | os.PathLike[str], conda_specification: str | None = None,
                        pip_requirements: str | None = None) -> Environment:
        """A Dockerfile (its text or a path), plus Python packages from at most one conda or pip
        file; with neither file the Dockerfile's own Python is used (user-managed), as in Azure."""
        env = cls._from_dependencies(name, conda_specification, pip_requirements)
        env.docker.base_dockerfile = dockerfile
        return env

    @classmethod
    def from_docker_image(cls, name: str, image: str, container_registry: Any = None,
                          conda_specification: str | None = None, pip_requirements: str | None = None) -> Environment:
        """A base image (and the ``ContainerRegistry`` to pull it from), plus Python packages as in
        :meth:`from_dockerfile`."""
        env = cls._from_dependencies(name, conda_specification, pip_requirements)
        env.docker.base_image = image
        if container_registry is not None:
            env.docker.base_image_registry = container_registry
        return env

    @classmethod
    def _from_dependencies(cls, name: str, conda_specification: str | None,
                           pip_requirements: str | None) -> Environment:
        if conda_specification and pip_requirements:
            raise InvalidInput("give only one of conda_specification or pip_requirements")
        if conda_specification:
            return cls.from_conda_specification(name, conda_specification)
        if pip_requirements:
            return cls.from_pip_requirements(name, pip_requirements)
        env = cls(name)
        env.python.user_managed_dependencies = True
        return env

    @staticmethod
    def from_docker_build_context(name: str, docker_build_context: Any) -> Environment:
        raise UnsupportedFeature("Environment.from_docker_build_context (a build context uploaded to Azure storage) "
                                 "is not provided by envcache: use Environment.from_dockerfile")

    # ---- daemon operations ---------------------------------------------------------------

    def register(self, workspace: Any = None) -> Environment:
        """Register this definition; a new version only if its content changed. Returns the
        registered environment (with its ``version``), as Azure does; this object is unchanged."""
        record = connect(workspace).register_environment(self.name, self.to_definition_dict())["environment"]
        return Environment._from_record(record)

    @staticmethod
    def add_private_pip_wheel(workspace: Any, file_path: str | os.PathLike[str], exist_ok: bool = False) -> str:
        """Upload a wheel to the daemon (Azure: to the workspace's storage) and return what to
        pass to ``CondaDependencies.add_pip_package``: ``name @ <daemon URL of the file>#sha256=…``,
        which pins the wheel's bytes (so it hashes alike on every daemon). As in Azure, a wheel
        that is already there raises unless ``exist_ok``."""
        answer = connect(workspace).upload_wheel(file_path)
        wheel = answer["wheel"]
        if not answer["created"] and not exist_ok:
            raise Conflict(f"private pip wheel {wheel['filename']} already exists ({wheel['digest']}); pass "
                           "exist_ok=True to use it")
        return str(wheel["requirement"])

    @staticmethod
    def get(workspace: Any, name: str, version: str | int | None = None, label: str | None = None) -> Environment:
        """A registered (or curated) environment; the latest version when ``version`` is None."""
        if label is not None:
            raise UnsupportedFeature("Environment.get(label=…): environment labels are an Azure ML feature envcache "
                                     "does not provide; ask for a version")
        return Environment._from_record(connect(workspace).environment(name, version))

    @staticmethod
    def list(workspace: Any = None) -> dict[str, Environment]:
        """The latest version of every environment, curated ones included, by name."""
        records = connect(workspace).environments()["environments"]
        return {r["name"]: Environment._from_record(r) for r in records}

    @staticmethod
    def label(workspace: Any, name: str, version: str, labels: Any) -> None:
        raise UnsupportedFeature("Environment.label: environment labels are an Azure ML feature envcache does not "
                                 "provide; refer to versions")

    def build(self, workspace: Any = None, image_build_compute: str | None = None,
              variant: str = "auto") -> ImageBuildDetails:
        """Ensure the image exists: a hit is ``Succeeded`` at once, a miss starts (or joins) the
        daemon's build. Unlike Azure this builds by content and does not register the environment."""
        if image_build_compute is not None:
            raise UnsupportedFeature("Environment.build(image_build_compute=…): Azure compute clusters are not used; "
                                     "the envcache daemon builds with its own engine")
        client = connect(workspace)
        return ImageBuildDetails(client, client.ensure(self.to_definition_dict(), variant),
                                 self.python.interpreter_path)

    def build_local(self, workspace: Any = None, platform: str | None = None, *, useDocker: bool = True,  # noqa: N803
                    pushImageToWorkspaceAcr: bool = False, variant: str = "auto",  # noqa: N803 - Azure's names
                    **kwargs: Any) -> DockerImageDetails:
        """Azure builds on this machine's Docker; envcache's equivalent is the daemon's engine
        (the daemon being the local one). The build log streams to stdout; a failed build raises.

        ``pushImageToWorkspaceAcr=True`` (Azure: push to the workspace's registry) here means the
        daemon's push upstreams: they must be configured, a freshly built image is pushed and
        this waits until the pushes are done. An image that was already cached is not pushed
        again (the daemon pushes what it builds; ``envcache push KEY`` publishes by hand).
        """
        if kwargs:
            raise UnsupportedFeature(f"Environment.build_local({', '.join(sorted(kwargs))}=…) is not provided by "
                                     "envcache (it takes useDocker, pushImageToWorkspaceAcr and variant)")
        if platform is not None and platform.lower() != "linux":
            raise UnsupportedFeature(f"Environment.build_local(platform={platform!r}): envcache builds Linux images")
        if not useDocker:
            raise UnsupportedFeature("Environment.build_local(useDocker=False) builds a conda environment on the "
                                     "host; envcache builds container images only (useDocker=True)")
        client = connect(workspace)
        before = _pushes(client) if pushImageToWorkspaceAcr else {}
        answer = client.ensure_image(self.to_definition_dict(), variant, on_log=lambda line: print(line, flush=True))
        details = DockerImageDetails.of(answer["image"], self.python.interpreter_path)
        if pushImageToWorkspaceAcr:
            if answer["status"] == "built":
                _wait_for_pushes(client, before)
                print(f"{details.image}: pushed to the daemon's upstream registries", flush=True)
            else:
                print(f"{details.image} was already cached, so it is not pushed now (the daemon pushes the images "
                      "it builds; `envcache push KEY` on its host publishes one by hand)", flush=True)
        return details

    def get_image_details(self, workspace: Any = None, variant: str = "auto") -> DockerImageDetails:
        """The cached image of this definition (by content, where Azure looks up the registered
        name and version); ``imageExistsInRegistry`` is False when it has not been built."""
        answer = connect(workspace).resolve(self.to_definition_dict(), variant)
        return DockerImageDetails.of(answer["image"] if answer else None, self.python.interpreter_path)

    # ---- Azure ML directories ------------------------------------------------------------

    def save_to_directory(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Write the Azure ML directory layout (``azureml_environment.json`` …), offline."""
        out = Path(path)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise InvalidInput(f"{out} is not empty (pass overwrite=True)")
        definition = spec.definition_from_dict(self.to_definition_dict(), source=f"Environment {self.name}")
        definition.version = None if self.version is None else str(self.version)
        spec.write_azure_dir(definition, out)

    @classmethod
    def load_from_directory(cls, path: str | os.PathLike[str]) -> Environment:
        definition = spec.load_definition(path, format="azure-dir")
        env = cls._from_spec(definition.name or Path(path).name, definition)
        env.version = definition.version
        return env


class EnvironmentReference:
    """Azure's ``EnvironmentReference``: a registered environment by name (and version, else the
    latest), accepted wherever the client takes ``environment=``."""

    def __init__(self, name: str, version: str | int | None = None) -> None:
        self.name = name
        self.version = version

    def get_environment(self, workspace: Any = None) -> Environment:
        return Environment.get(workspace, self.name, self.version)

    def __repr__(self) -> str:
        return f"EnvironmentReference(name={self.name!r}, version={self.version!r})"


def _checked_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"Environment name: expected a non-empty string, got {name!r}")
    return name


def _pushes(client: Client) -> dict[str, int]:
    """The daemon's push counts by state; refuses when it has no upstream to push to."""
    upstream = client.health()["upstream"]
    if not upstream["configured"]:
        raise InvalidInput(f"build_local(pushImageToWorkspaceAcr=True): the daemon at {client.url} has no upstream "
                           "registry to push to; add an [[upstreams]] entry with mode = \"push\" or \"both\"")
    return dict(upstream["pushes"])


def _wait_for_pushes(client: Client, before: dict[str, int]) -> None:
    """Wait until the daemon's push queue is empty; fail if none of this build's pushes was done
    or one failed. (The daemon reports push counts, not pushes per image.)"""
    deadline = time.monotonic() + PUSH_WAIT_SECONDS
    while True:
        counts = _pushes(client)
        if not any(counts.get(state, 0) for state in _PUSHING):
            break
        if time.monotonic() > deadline:
            raise EnvcacheError(f"the daemon at {client.url} is still pushing after {PUSH_WAIT_SECONDS:.0f} s; "
                                "see `envcache upstream list`")
        time.sleep(0.2)
    if counts.get("failed", 0) > before.get("failed", 0):
        raise EnvcacheError(f"the daemon at {client.url} built the image but could not push it to its upstream; "
                            "see `envcache upstream list`")
    if counts.get("done", 0) <= before.get("done", 0):
        raise EnvcacheError(f"the daemon at {client.url} pushed nothing: its upstreams are pull-only "
                            "(mode = \"push\" or \"both\" publishes)")


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
