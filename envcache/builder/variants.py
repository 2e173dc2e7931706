"""Which variant (``cpu``/``gpu``) a request means, and which base image each variant uses.

``auto`` asks the host: a GPU box gets GPU images, everything else CPU ones. GPU images are
still *built* on hosts without a GPU (the build only needs the base image), so detection is only
consulted for ``auto``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from envcache.errors import InvalidInput

if TYPE_CHECKING:
    from envcache.service.config import Config

VARIANTS = ("cpu", "gpu")


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


def resolve_variant(variant: str, proc_root: str | Path = "/", dev_root: str | Path = "/dev") -> str:
    """``cpu``/``gpu`` as given; ``auto`` → ``gpu`` on a host with an NVIDIA GPU, else ``cpu``."""
    value = (variant or "").strip().lower()
    if value in VARIANTS:
        return value
    if value != "auto":
        raise InvalidInput(f"variant: {variant!r} is not one of cpu, gpu, auto")
    real_host = str(proc_root) == "/" and str(dev_root) == "/dev"
    return "gpu" if host_has_nvidia_gpu(proc_root, dev_root, check_path=real_host) else "cpu"


def variant_base_image(config: Config, variant: str) -> str:
    """The daemon's base image for ``variant`` (``[variants.<variant>]`` in the config)."""
    entry = config.variants.get(variant)
    if entry is None:
        raise InvalidInput(f"the definition names no base image and the daemon config has no "
                           f"[variants.{variant}] base_image; set one of them")
    return entry.base_image
