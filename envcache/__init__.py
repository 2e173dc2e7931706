"""envcache: a content-addressed environment build cache and OCI image registry daemon.

The package is split into layers that only import downwards (README, "Code layout"; checked by
tests/test_layers.py): ``oci`` is the OCI vocabulary, ``definition`` turns a definition into
canonical bytes, ``store`` keeps blobs and metadata behind interfaces, ``registry`` serves them
over the OCI Distribution API, ``builder`` makes images, ``upstream`` talks to other registries,
``service`` is the daemon (its one composition root), ``cli`` the command; ``client`` is the
library users import, speaking ``wire``.

The client classes are imported on first use, so ``import envcache`` (and with it every CLI
start) stays cheap: no aiohttp import until a client is actually made.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: README, "The fast hit path"
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

_CLIENT_NAMES = (
    "Client", "AsyncClient",
    # The Azure-style facade: `from azureml.core… import X` becomes `from envcache import X`.
    "Workspace", "Environment", "EnvironmentReference", "CondaDependencies", "ContainerRegistry", "DockerSection",
    "PythonSection", "SparkSection", "SparkPackage", "DockerImageDetails", "ImageBuildDetails",
)
__all__ = ["__version__", *_CLIENT_NAMES]


def __getattr__(name: str) -> Any:
    if name not in _CLIENT_NAMES:
        raise AttributeError(f"module 'envcache' has no attribute {name!r}")
    from envcache import client  # its own lazy table says which module holds each name

    return getattr(client, name)
