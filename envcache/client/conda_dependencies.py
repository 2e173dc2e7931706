"""Azure's ``CondaDependencies`` (``azureml.core.conda_dependencies``): conda channels and
packages, pip packages and pip options, edited in place and handed to an ``Environment``.

The lists are plain and offline; a conda file is read and written through the definition
layer's conda loader, so ``CondaDependencies("environment.yml")`` means exactly what
``envcache hash environment.yml`` hashes. Where Azure adds things nobody asked for
(``azureml-defaults``, a default Python, its SDK's index) this adds nothing: see README,
"Coming from Azure ML".
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from envcache.errors import InvalidInput
from envcache.definition.model import redact_url_credentials

PYTHON = "python"


def _package_name(entry: str) -> str:
    """The project a conda/pip entry names (``numpy>=1.2`` → ``numpy``; a wheel URL → its
    project), compared the way pip compares names, so ``add`` replaces and ``remove`` finds it."""
    if entry.endswith(".whl"):
        entry = entry.rsplit("/", 1)[-1].split("-", 1)[0]
    for stop in "=<>!~[ ;@":
        entry = entry.split(stop, 1)[0]
    return entry.split("::")[-1].strip().lower().replace("_", "-")


def _flag(option: str) -> str:
    """``--index-url https://…`` → ``--index-url``: the part that says which pip option it is."""
    return option.split()[0].split("=")[0]


class CondaDependencies:
    """Azure's ``CondaDependencies``. ``CondaDependencies()`` is empty (Azure's holds Python 3.8 and
    ``azureml-defaults``); ``CondaDependencies(path)`` reads a conda ``environment.yml``.

    Adding a package that is already listed under the same name replaces the old entry, for conda
    as for pip (Azure replaces pip entries but appends a second conda entry).
    """

    def __init__(self, conda_dependencies_file_path: str | os.PathLike[str] | None = None) -> None:
        self._channels: list[str] = []
        self._conda: list[str] = []
        self._pip: list[str] = []
        self._pip_options: list[str] = []
        if conda_dependencies_file_path is not None:
            self._read(Path(conda_dependencies_file_path))

    def _read(self, path: Path) -> None:
        from envcache import definition as spec  # the YAML and MatchSpec parsers: only when a file is read

        definition = spec.load_definition(path, format="conda")
        if definition.environment_variables:
            raise InvalidInput(f"{path}: 'variables:' are environment variables, which CondaDependencies does not "
                               "hold; use Environment.from_conda_specification, which keeps them")
        deps = definition.python.conda_dependencies
        self._replace_all(deps.channels, deps.conda_packages, deps.pip_packages, deps.pip_options)

    def _replace_all(self, channels: Iterable[str], conda_packages: Iterable[str], pip_packages: Iterable[str],
                     pip_options: Iterable[str]) -> None:
        """Take lists as they are (a file's two ``numpy`` constraints stay two entries): what was
        read must hash as the file does."""
        self._channels, self._conda = list(channels), list(conda_packages)
        self._pip, self._pip_options = list(pip_packages), list(pip_options)

    @staticmethod
    def create(pip_indexurl: str | None = None, pip_packages: Iterable[str] | None = None,
               conda_packages: Iterable[str] | None = None, python_version: str | None = None,
               pin_sdk_version: bool = True) -> CondaDependencies:
        """Azure's factory, without Azure's additions: no ``azureml-defaults``, no default Python,
        no extra index. ``pin_sdk_version`` pins Azure's SDK packages in Azure; there is no SDK
        to pin here, so it changes nothing."""
        deps = CondaDependencies()
        if python_version:
            deps.set_python_version(python_version)
        for package in conda_packages or ():
            deps.add_conda_package(package)
        for package in pip_packages or ():
            deps.add_pip_package(package)
        if pip_indexurl:
            deps.set_pip_index_url(pip_indexurl)
        return deps

    # ---- conda ----------------------------------------------------------------------------

    def add_channel(self, channel: str) -> None:
        if channel not in self._channels:
            self._channels.append(channel)

    def remove_channel(self, channel: str) -> None:
        self._channels = [c for c in self._channels if c != channel]

    def add_conda_package(self, conda_package: str) -> None:
        """Add a MatchSpec; an entry of the same name is replaced (``python=3.11`` sets the Python)."""
        name = _package_name(conda_package)
        self._conda = [p for p in self._conda if _package_name(p) != name] + [conda_package]

    def remove_conda_package(self, conda_package: str) -> None:
        name = _package_name(conda_package)
        self._conda = [p for p in self._conda if _package_name(p) != name]

    def set_python_version(self, version: str) -> None:
        self.add_conda_package(f"{PYTHON}={version}")

    def get_python_version(self) -> str | None:
        """The version in the ``python`` conda entry (``3.11`` from ``python=3.11``), or None."""
        for entry in self._conda:
            if _package_name(entry) == PYTHON:
                return entry.split("::")[-1][len(PYTHON):].lstrip("=<>!~ ") or None
        return None

    # ---- pip ------------------------------------------------------------------------------

    def add_pip_package(self, pip_package: str) -> None:
        """Add a pip requirement; an entry for the same project is replaced."""
        if pip_package.startswith("-"):
            raise InvalidInput(f"pip package {pip_package!r} is an option: use set_pip_option")
        name = _package_name(pip_package)
        self._pip = [p for p in self._pip if _package_name(p) != name] + [pip_package]

    def remove_pip_package(self, pip_package: str) -> None:
        name = _package_name(pip_package)
        self._pip = [p for p in self._pip if _package_name(p) != name]

    def set_pip_option(self, pip_option: str) -> None:
        """Add a pip option; one with the same flag (``--index-url``) replaces the old one."""
        if not pip_option.startswith("-"):
            raise InvalidInput(f"pip option {pip_option!r} must start with '-' (add packages with add_pip_package)")
        flag = _flag(pip_option)
        self._pip_options = [o for o in self._pip_options if _flag(o) != flag] + [pip_option]

    def remove_pip_option(self, pip_option: str) -> None:
        flag = _flag(pip_option)
        self._pip_options = [o for o in self._pip_options if _flag(o) != flag]

    def set_pip_index_url(self, index_url: str) -> None:
        """Azure passes the whole option (``--index-url URL``); a bare URL is accepted too."""
        self.set_pip_option(index_url if index_url.startswith("-") else f"--index-url {index_url}")

    def set_pip_requirements(self, pip_requirements: Iterable[str]) -> None:
        """Replace the whole pip list: lines starting with ``-`` are options, the rest packages."""
        entries = list(pip_requirements)
        self._pip_options = [e for e in entries if e.startswith("-")]
        self._pip = [e for e in entries if not e.startswith("-")]

    # ---- reading --------------------------------------------------------------------------
    # Azure returns iterators; lists iterate the same and can also be compared and indexed.

    @property
    def conda_channels(self) -> list[str]:
        return list(self._channels)

    @property
    def conda_packages(self) -> list[str]:
        return list(self._conda)

    @property
    def pip_packages(self) -> list[str]:
        return list(self._pip)

    @property
    def pip_options(self) -> list[str]:
        return list(self._pip_options)

    def as_dict(self) -> dict[str, Any]:
        """The conda environment mapping (``name``, ``channels``, ``dependencies`` with ``pip:``)."""
        from envcache import definition as spec
        from envcache.definition.conda_env import conda_env_to_dict

        model = spec.CondaDependencies(self.conda_channels, self.conda_packages, self.pip_packages, self.pip_options)
        return conda_env_to_dict(model, None)

    def serialize_to_string(self) -> str:
        """The conda ``environment.yml`` text."""
        import yaml

        return yaml.safe_dump(self.as_dict(), sort_keys=False)

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the conda file to ``path``; returns the path written."""
        target = Path(path)
        if target.is_dir():
            raise InvalidInput(f"{target} is a directory: give the file's full path")
        target.write_text(self.serialize_to_string(), encoding="utf-8")
        return str(target)

    def save_to_file(self, base_directory: str | os.PathLike[str], conda_file_path: str | None = None) -> str:
        """Azure's older form of :meth:`save`: ``conda_file_path`` (default ``conda_dependencies.yml``)
        relative to ``base_directory``."""
        return self.save(Path(base_directory) / (conda_file_path or "conda_dependencies.yml"))

    # ---- envcache's definition document ---------------------------------------------------

    def to_dict(self) -> dict[str, list[str]]:
        """``python.conda_dependencies`` of envcache's definition document."""
        return {"channels": self.conda_channels, "conda_packages": self.conda_packages,
                "pip_packages": self.pip_packages, "pip_options": self.pip_options}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CondaDependencies:
        deps = cls()
        deps._replace_all(data.get("channels") or (), data.get("conda_packages") or (),
                          data.get("pip_packages") or (), data.get("pip_options") or ())
        return deps

    def __repr__(self) -> str:
        # Index URLs and channels may carry tokens: never show them.
        hide = redact_url_credentials
        return (f"CondaDependencies(conda={self._conda!r}, pip={[hide(p) for p in self._pip]!r}, "
                f"pip_options={[hide(o) for o in self._pip_options]!r}, "
                f"channels={[hide(c) for c in self._channels]!r})")
