"""The conda stage: solve and install on the host with py-rattler, copy the prefix in.

rattler installs into a directory of the build context while patching the *image* path
(``/opt/envcache/env``) into every file that embeds its prefix (``alternative_target_prefix``),
so the result is exactly what an install inside the image would give — without needing conda, a
solver or network access in the base image, and with ``file://`` channels readable directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envcache.builder.errors import BuildFailed

PREFIX = "/opt/envcache/env"


def virtual_packages(cuda: str | None) -> list[Any]:
    """The image's virtual packages, not the build host's: the host's ``__cuda`` is dropped
    (a CPU image must not get CUDA builds because the build machine has a GPU) and the GPU
    variant declares its base image's CUDA version, so GPU images solve on hosts without one."""
    import rattler

    detected = [p.into_generic() for p in rattler.VirtualPackage.detect()]
    packages = [p for p in detected if p.name.normalized != "__cuda"]
    if cuda:
        packages.append(rattler.GenericVirtualPackage(rattler.PackageName("__cuda"), rattler.Version(cuda),
                                                      rattler.BuildString("0")))
    return packages


async def solve(channels: list[str], specs: list[str], cuda: str | None = None) -> list[Any]:
    """Solve ``specs`` against ``channels`` for linux-64 (rattler's RepoDataRecords)."""
    import rattler

    if not channels:
        raise BuildFailed("conda", "conda packages are listed but no channel is (add python.conda_dependencies.channels)")
    try:
        return list(await rattler.solve(
            sources=channels, specs=specs, platforms=["linux-64", "noarch"], virtual_packages=virtual_packages(cuda),
        ))
    except Exception as exc:  # rattler raises its own exception types per failure kind
        raise BuildFailed("conda", f"cannot solve {', '.join(specs)} from {', '.join(channels)}: {exc}") from exc


def lock_entries(records: list[Any]) -> list[dict[str, Any]]:
    """The conda part of the lock: one record per package, with its artifact and hashes."""
    return [
        {"name": r.name.normalized, "version": str(r.version), "build": str(r.build),
         "channel": str(r.channel) if r.channel else None, "subdir": str(r.subdir), "url": str(r.url),
         "sha256": r.sha256.hex() if r.sha256 else None, "md5": r.md5.hex() if r.md5 else None}
        for r in sorted(records, key=lambda r: r.name.normalized)
    ]


async def install(records: list[Any], target: Path) -> None:
    """Install solved ``records`` into ``target`` as if it were :data:`PREFIX`."""
    import rattler

    try:
        await rattler.install(records, target_prefix=target, alternative_target_prefix=PREFIX,
                              show_progress=False, platform=rattler.Subdir("linux-64"))
    except Exception as exc:
        raise BuildFailed("conda", f"cannot install the solved packages: {exc}") from exc


def write_lock(lock: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(lock, indent=1, sort_keys=True))
