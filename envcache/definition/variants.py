"""What a definition is as built for one variant: which variant a request means, the overrides
applied, the base image.

``auto`` asks the host: a GPU box gets GPU images, everything else CPU ones. GPU images are
still *built* on hosts without a GPU (the build only needs the base image), so detection is only
consulted for ``auto`` — in :func:`resolve_variant`, the one place a variant name is read.
"""

from __future__ import annotations

import copy
import functools
import shutil
from pathlib import Path

from envcache.definition.canonical import canonical_registry_address, conda_package_name, pip_package_name
from envcache.definition.dockerfile import dockerfile_base_image
from envcache.definition.model import VARIANTS, Definition, Variant, VariantOverride
from envcache.errors import DefinitionError, InvalidInput
from envcache.oci import ReferenceInvalid, RegistryLogin, names_registry, parse_reference

CHOICES = (*VARIANTS, "auto")


def host_has_nvidia_gpu(proc_root: str | Path = "/", dev_root: str | Path = "/dev",
                        check_path: bool = True) -> bool:
    """True when the NVIDIA driver is loaded (``/proc/driver/nvidia/version``), a device node
    exists (``/dev/nvidia0``, ``/dev/nvidiactl``…), or ``nvidia-smi`` is installed.

    The roots are parameters so tests can point them at a fake tree; ``nvidia-smi`` on PATH is
    only consulted for the real host (``check_path``).
    """
    if (Path(proc_root) / "proc" / "driver" / "nvidia" / "version").is_file():
        return True
    dev = Path(dev_root)
    if dev.is_dir() and any(entry.name.startswith("nvidia") for entry in dev.iterdir()):
        return True
    return bool(check_path and shutil.which("nvidia-smi"))


def resolve_variant(variant: str, proc_root: str | Path = "/", dev_root: str | Path = "/dev") -> Variant:
    """``cpu``/``gpu`` as given; ``auto`` → ``gpu`` on a host with an NVIDIA GPU, else ``cpu``."""
    value = (variant or "").strip().lower()
    if value in VARIANTS:
        return Variant(value)
    if value != "auto":
        raise InvalidInput(f"variant: {variant!r} is not one of {', '.join(CHOICES)}")
    if str(proc_root) == "/" and str(dev_root) == "/dev":
        return _host_variant()  # the host does not change while we run
    return Variant.GPU if host_has_nvidia_gpu(proc_root, dev_root, check_path=False) else Variant.CPU


@functools.cache
def _host_variant() -> Variant:
    return Variant.GPU if host_has_nvidia_gpu() else Variant.CPU


def for_variant(defn: Definition, variant: str) -> Definition:
    """The definition as built for ``variant``: its override applied, ``variants`` dropped.

    A base image or Dockerfile in the override replaces the general base; listed channels and
    options are appended; a package in the override replaces a general package of the same name.
    ``docker.base_image_registry`` stays, so a variant's base image that names no registry comes
    from its address too (a private name never falls through to Docker Hub).
    """
    if variant not in VARIANTS:
        raise DefinitionError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}", location="variant")
    out = copy.deepcopy(defn)
    override = out.variants.get(variant)
    out.variants = {}
    if override is None:
        return out
    try:
        _apply(out, override)
    except ValueError as exc:
        raise DefinitionError(str(exc), location=f"variants.{variant}") from None
    return out


def _apply(out: Definition, override: VariantOverride) -> None:
    if override.base_image is not None:
        out.docker.base_image, out.docker.base_dockerfile = override.base_image, None
    if override.base_dockerfile is not None:
        out.docker.base_dockerfile, out.docker.base_image = override.base_dockerfile, None
    deps = out.python.conda_dependencies
    deps.channels = deps.channels + override.channels
    deps.pip_options = deps.pip_options + override.pip_options
    replaced_conda = {conda_package_name(p) for p in override.conda_packages}
    deps.conda_packages = [p for p in deps.conda_packages if conda_package_name(p) not in replaced_conda] + override.conda_packages
    replaced_pip = {pip_package_name(p) for p in override.pip_packages} - {None}
    deps.pip_packages = [p for p in deps.pip_packages if pip_package_name(p) not in replaced_pip] + override.pip_packages


def base_of(view: Definition, default: str | None) -> str | None:
    """The image a (variant-applied) definition builds on, as the engine is asked for it.

    A Dockerfile's first ``FROM`` (None without one) wins over ``docker.base_image``, because
    that is what the engine starts from; ``default`` (the daemon's base for the variant)
    applies when the definition names neither. A ``base_image`` that names no registry gets
    ``base_image_registry.address`` in front (``team/base:1.0`` → ``myregistry.azurecr.io/team/base:1.0``,
    the rule of :func:`~envcache.definition.canonical.qualified_image_ref`); otherwise it is kept
    as written, so a short name resolves in the engine the way that engine resolves it.
    """
    docker = view.docker
    if docker.base_dockerfile:
        return dockerfile_base_image(docker.base_dockerfile)
    if docker.base_image is None:
        return default
    address = canonical_registry_address(docker.base_image_registry.address or "")
    return f"{address}/{docker.base_image.strip()}" if address and not names_registry(docker.base_image) \
        else docker.base_image.strip()


def base_login(view: Definition, base: str | None) -> RegistryLogin | None:
    """The definition's login for the registry of ``base`` (what :func:`base_of` answered).

    It belongs to ``base_image_registry.address`` (or, without one, to the base's own registry)
    and is used only for that host. A definition stored without its password (registered
    environments are stored redacted) has no login: the daemon's ``[[upstreams]]`` entry for the
    host, if any, applies instead.
    """
    registry = view.docker.base_image_registry
    if not (registry.username and registry.password) or base is None:
        return None
    host = canonical_registry_address(registry.address or "") or _host_of(base)
    return RegistryLogin(host, registry.username, registry.password) if host else None


def _host_of(reference: str) -> str | None:
    """The registry host of ``reference`` (``docker.io`` for Docker Hub), None when it is no reference."""
    try:
        return parse_reference(reference).host
    except ReferenceInvalid:
        return None
