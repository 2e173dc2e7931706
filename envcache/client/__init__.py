"""The envcache client library: ``Client`` (sync), ``AsyncClient``, and the Azure-style facade.

Imported lazily (``envcache.Client`` etc.): the sync client needs only the standard library, so
scripts and the CLI start fast; ``AsyncClient`` brings in aiohttp when first used.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: README, "The fast hit path"
if TYPE_CHECKING:
    from typing import Any

_LAZY = {
    "Client": "envcache.client.sync",
    "AsyncClient": "envcache.client.aio",
    "DaemonUnavailable": "envcache.client.base",
    # The Azure-style facade (README, "Coming from Azure ML"):
    "Environment": "envcache.client.facade",
    "EnvironmentReference": "envcache.client.facade",
    "CondaDependencies": "envcache.client.conda_dependencies",
    "ContainerRegistry": "envcache.client.sections",
    "DockerSection": "envcache.client.sections",
    "PythonSection": "envcache.client.sections",
    "SparkPackage": "envcache.client.sections",
    "SparkSection": "envcache.client.sections",
    "DockerImageDetails": "envcache.client.image_details",
    "ImageBuildDetails": "envcache.client.image_details",
    "Workspace": "envcache.client.workspace",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'envcache.client' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
