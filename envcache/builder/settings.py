"""What the builder is configured with: the ``[build]`` section of the daemon's config.

The builder's own narrow settings (the daemon's ``Config`` composes them), so the builder never
reads the daemon's configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("auto", "docker", "buildah", "none")
COMPRESSIONS = ("zstd", "gzip")


@dataclass
class BuildSettings:
    engine: str = "auto"                 # one of ENGINES; auto: Docker when its socket exists, else buildah
    docker_host: str | None = None
    compression: str = "gzip"            # one of COMPRESSIONS: gzip every client pulls; zstd not Docker < 23
    concurrency: int = 2                 # builds at once (the daemon's build queue)
    stage_timeout: int = 3600            # seconds one stage may take
    # buildah's storage; unset = buildah's own defaults. vfs works everywhere (no overlay mounts).
    buildah_root: str | None = None
    buildah_runroot: str | None = None
    buildah_storage_driver: str = "vfs"
    # CA bundle handed to pip during a build only (never stored in a layer); unset = pip's own,
    # then SSL_CERT_FILE, then the system bundle.
    ca_bundle: str | None = None
