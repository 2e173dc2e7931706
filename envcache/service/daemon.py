"""The parts of one running daemon, as the composition root assembled them; what views read."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from envcache.builder.engines import Engine
    from envcache.builder.settings import BuildSettings
    from envcache.registry.blobs import UploadState
    from envcache.service.bases import Resolver
    from envcache.service.config import Config
    from envcache.service.ensure import Ensurer
    from envcache.service.environments import Environments
    from envcache.service.metrics import Metrics
    from envcache.service.pipelines import PipelineRuns
    from envcache.service.requests import Definitions
    from envcache.store import Store
    from envcache.upstream.base import BasePuller
    from envcache.upstream.source import UpstreamSource


class EngineHandle:
    """The daemon's engine, detected on first use; None when no engine is available.

    Detection waits for the first build or base lookup: a daemon used only for lookups never
    touches it, and the engine's client library is only imported then.
    """

    def __init__(self, settings: BuildSettings) -> None:
        self._settings = settings
        self._engine: Engine | None = None
        self._detected = False
        self._lock = asyncio.Lock()

    async def get(self) -> Engine | None:
        async with self._lock:
            if not self._detected:
                from envcache.builder.engines import detect_engine

                self._engine = detect_engine(self._settings)
                self._detected = True
        return self._engine


@dataclass
class Daemon:
    config: Config
    store: Store
    engine: EngineHandle
    resolvers: list[Resolver]          # in the order they are asked
    ensurer: Ensurer
    environments: Environments
    definitions: Definitions
    upstream: UpstreamSource
    puller: BasePuller
    uploads: UploadState
    metrics: Metrics
    pipelines: PipelineRuns


DAEMON = web.AppKey("envcache_daemon", Daemon)
