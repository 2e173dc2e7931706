"""The definition model: one dataclass per section of an Azure ML Environment.

Every input format (envcache YAML/JSON, an Azure ML directory, conda ``environment.yml``,
``requirements.txt``, ``conda env export``) is loaded into these classes, so the canonical form
and the keys are computed from one shape only. Entries are kept as the user wrote them (strings);
the canonical form parses and normalises them, which keeps loaders simple and lets a definition be
written back without surprises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum


class Variant(StrEnum):
    """The two kinds of image envcache builds from one definition: separate base images, and
    optional per-variant package overrides. A ``str``, so it hashes, stores and prints as its name."""

    CPU = "cpu"
    GPU = "gpu"


VARIANTS: tuple[str, ...] = tuple(v.value for v in Variant)
#: The input formats a definition is read from (``--format``; detected from the path by default).
FORMATS = ("yaml", "json", "azure-dir", "conda", "conda-export", "requirements")

DEFAULT_INTERPRETER_PATH = "python"

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s]*@)")


def redact_url_credentials(text: str) -> str:
    """Drop ``user:password@`` from every URL in ``text``.

    Credentials are not content (the same index with another token installs the same
    packages) and must never reach a hash, a log or a ``repr``.
    """
    return _USERINFO.sub(lambda m: m.group("scheme"), text)


@dataclass
class CondaDependencies:
    """What conda and pip install: Azure's ``python.conda_dependencies``.

    ``pip_options`` are pip's global options (``--index-url URL``, ``--pre`` …); in Azure's
    ``conda_dependencies.yml`` they sit inside the ``pip:`` list, here they get their own field.
    """

    channels: list[str] = field(default_factory=list)
    conda_packages: list[str] = field(default_factory=list)
    pip_packages: list[str] = field(default_factory=list)
    pip_options: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        # URLs in options and channels may carry tokens: never show them.
        redact = redact_url_credentials
        return (f"CondaDependencies(channels={[redact(c) for c in self.channels]!r}, "
                f"conda_packages={self.conda_packages!r}, pip_packages={[redact(p) for p in self.pip_packages]!r}, "
                f"pip_options={[redact(o) for o in self.pip_options]!r})")


@dataclass
class PythonSection:
    """Azure's ``python`` section.

    With ``user_managed_dependencies`` the base image already holds the environment: conda and
    pip lists are not installed (and so not hashed), only ``interpreter_path`` matters.
    """

    conda_dependencies: CondaDependencies = field(default_factory=CondaDependencies)
    user_managed_dependencies: bool = False
    interpreter_path: str = DEFAULT_INTERPRETER_PATH


@dataclass
class RegistryCredentials:
    """Where and how to pull a private base image (Azure's ``ContainerRegistry``).

    ``address`` says where the base comes from, so it is content: a ``base_image`` that names no
    registry is read from it (see :func:`envcache.definition.canonical.qualified_image_ref`). The
    username and password only decide who may pull it, so they are never hashed.
    """

    address: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass
class DockerSection:
    """Azure's ``docker`` section.

    ``base_image`` and ``base_dockerfile`` are alternatives (a Dockerfile brings its own ``FROM``).
    Both ``None`` means "the variant's base image from the daemon config". ``shm_size``,
    ``arguments``, ``shared_volumes`` and ``enabled`` say how a container is *run*, not what is
    built, so they are kept for round-trips but excluded from the canonical form.
    """

    base_image: str | None = None
    base_dockerfile: str | None = None
    base_image_registry: RegistryCredentials = field(default_factory=RegistryCredentials)
    shm_size: str | None = None
    arguments: list[str] = field(default_factory=list)
    shared_volumes: bool = True
    enabled: bool = False


@dataclass
class SparkPackage:
    """A Maven coordinate, as Azure's ``SparkPackage``."""

    group: str
    artifact: str
    version: str


@dataclass
class SparkSection:
    """Azure's ``spark`` section: Maven repositories (order = priority) and packages."""

    repositories: list[str] = field(default_factory=list)
    packages: list[SparkPackage] = field(default_factory=list)
    precache_packages: bool = True

    def __repr__(self) -> str:
        return (f"SparkSection(repositories={[redact_url_credentials(r) for r in self.repositories]!r}, "
                f"packages={self.packages!r}, precache_packages={self.precache_packages!r})")


@dataclass
class VariantOverride:
    """Per-variant changes (envcache's addition to the Azure model).

    ``base_image``/``base_dockerfile`` replace the definition's base; the lists are added to the
    definition's lists, a package of the same name replacing the general one (so ``gpu`` can
    pin ``torch`` to a CUDA build).
    """

    base_image: str | None = None
    base_dockerfile: str | None = None
    channels: list[str] = field(default_factory=list)
    conda_packages: list[str] = field(default_factory=list)
    pip_packages: list[str] = field(default_factory=list)
    pip_options: list[str] = field(default_factory=list)


@dataclass
class Definition:
    """An environment definition. ``name``, ``version`` and ``description`` are labels only."""

    name: str | None = None
    version: str | None = None
    description: str | None = None
    python: PythonSection = field(default_factory=PythonSection)
    docker: DockerSection = field(default_factory=DockerSection)
    spark: SparkSection = field(default_factory=SparkSection)
    environment_variables: dict[str, str] = field(default_factory=dict)
    variants: dict[str, VariantOverride] = field(default_factory=dict)


__all__ = [
    "CondaDependencies", "Definition", "DockerSection", "PythonSection", "RegistryCredentials",
    "SparkPackage", "SparkSection", "Variant", "VariantOverride", "VARIANTS",
    "DEFAULT_INTERPRETER_PATH", "FORMATS", "redact_url_credentials",
]
