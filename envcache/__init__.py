"""envcache: a content-addressed environment build cache and OCI image registry daemon.

The package is split by concern (see README, "Code layout"): ``spec`` turns a definition into
canonical bytes and keys, ``store`` keeps blobs and metadata, ``registry`` serves them over the
OCI Distribution API, ``build`` makes images, ``upstream`` talks to other registries,
``service`` is the daemon and ``client`` the library users import.

The client classes are imported on first use, so ``import envcache`` (and with it every CLI
start) stays cheap: no aiohttp import until a client is actually made.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Client": "envcache.client.sync",
    "AsyncClient": "envcache.client.aio",
    "Environment": "envcache.client.facade",
    "CondaDependencies": "envcache.client.facade",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'envcache' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
