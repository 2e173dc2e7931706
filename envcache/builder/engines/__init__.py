"""Container engines the builder can drive: Docker Engine API (aiodocker) and buildah."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from envcache.builder.engines.base import Engine, ExportedImage, ImageInfo
from envcache.builder.engines.buildah import BuildahEngine
from envcache.builder.engines.docker import DockerEngine, docker_endpoint
from envcache.builder.errors import EngineUnavailable

if TYPE_CHECKING:
    from envcache.builder.settings import BuildSettings

__all__ = ["BuildahEngine", "DockerEngine", "Engine", "ExportedImage", "ImageInfo", "detect_engine"]


def _buildah(build: BuildSettings) -> BuildahEngine:
    return BuildahEngine(root=Path(build.buildah_root) if build.buildah_root else None,
                         runroot=Path(build.buildah_runroot) if build.buildah_runroot else None,
                         storage_driver=build.buildah_storage_driver)


def _docker_socket_present(docker_host: str | None) -> bool:
    host = docker_endpoint(docker_host)
    if host.startswith("unix://"):
        return Path(host[len("unix://"):]).exists()
    return True  # tcp:// and friends: only a request can tell


def detect_engine(settings: BuildSettings) -> Engine | None:
    """The engine ``[build] engine`` names; for ``auto`` Docker when its socket exists, else
    buildah when installed, else None (lookups and pulls still work; builds fail clearly).

    Synchronous and cheap (a ``stat`` and a ``PATH`` lookup), so the daemon can call it again
    whenever a build needs an engine: whether the engine really answers is found out by
    ``Engine.version``, whose error names the socket.
    """
    choice = settings.engine
    docker_host = settings.docker_host
    if choice == "none":
        return None
    if choice == "buildah":
        if not shutil.which("buildah"):
            raise EngineUnavailable('[build] engine = "buildah" but buildah is not installed (apt-get install buildah)')
        return _buildah(settings)
    if choice == "docker" or _docker_socket_present(docker_host):
        return DockerEngine(docker_host)
    if shutil.which("buildah"):
        return _buildah(settings)
    return None
