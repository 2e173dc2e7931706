"""The parts of one running daemon, as the composition root assembled them; what views read."""

from __future__ import annotations

import asyncio
import time
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
    from envcache.service.offload import Offload
    from envcache.service.pipelines import PipelineRuns
    from envcache.service.requests import Definitions
    from envcache.service.wheels import Wheels
    from envcache.store import Store
    from envcache.upstream.base import BasePuller
    from envcache.upstream.source import UpstreamSource


#: What a build without an engine is told (and ``status`` says when none is found).
NO_ENGINE = ("no container engine found: install Docker (apt-get install docker.io) and start dockerd, or "
             "install buildah (apt-get install buildah); or set [build] engine / docker_host in the daemon config")
#: Seconds a probe of the engine (is it there, does it answer, which version) is reused for status.
STATE_TTL = 5.0


@dataclass(frozen=True)
class EngineState:
    """Which engine builds would use right now, its version, and whether it answers."""

    name: str                  # docker | buildah | none
    answers: bool
    version: str | None = None
    endpoint: str | None = None  # the Docker Engine's socket or URL
    detail: str | None = None    # what is wrong and what to do, when it does not answer

    def describe(self) -> str:
        """One phrase for the serve banner and ``envcache status``."""
        if self.name == "none":
            return f"engine: none ({self.detail})"
        where = f" at {self.endpoint}" if self.endpoint else ""
        if self.answers:
            return f"engine: {self.name} {self.version}{where}"
        return f"engine: {self.name}{where} does not answer ({self.detail})"


class EngineHandle:
    """The daemon's build engine, detected at start and again whenever a build needs one.

    WHY again: people install buildah or start dockerd after the daemon, and the daemon must
    not need a restart to notice. Detection (:func:`detect_engine`) is a ``stat`` of the Docker
    socket and a ``PATH`` lookup, cheap enough to repeat; the engine's client is imported only
    then (a daemon used only for lookups never loads aiodocker). Whether the engine answers is
    asked (``Engine.version``) before every build, and for status at most every few seconds.
    """

    def __init__(self, settings: BuildSettings) -> None:
        self._settings = settings
        self._engine: Engine | None = None
        self._lock = asyncio.Lock()
        self._state: tuple[float, EngineState] | None = None

    async def get(self) -> Engine | None:
        """The engine as detected now; the same instance while the choice does not change."""
        from envcache.builder.engines import detect_engine

        async with self._lock:
            fresh = detect_engine(self._settings)
            if _identity(fresh) != _identity(self._engine):
                if self._engine is not None:
                    await self._engine.close()
                self._engine = fresh
                self._state = None
            elif fresh is not None:
                await fresh.close()  # an unused duplicate of the engine we keep
        return self._engine

    async def ready(self) -> tuple[Engine, str]:
        """(engine, its version) for a build, asked now; raises EngineUnavailable saying what to do."""
        from envcache.builder.errors import EngineUnavailable

        engine = await self.get()
        if engine is None:
            raise EngineUnavailable(NO_ENGINE)
        return engine, await engine.version()

    async def state(self) -> EngineState:
        """Which engine is in use, its version and whether it answers. An engine that answers is
        believed for a few seconds; one that does not is asked again each time (a stat, a
        refused connection), so starting it shows at once."""
        from envcache.errors import EnvcacheError

        if self._state is not None and time.monotonic() - self._state[0] < STATE_TTL:
            return self._state[1]
        try:
            engine = await self.get()
        except EnvcacheError as exc:  # e.g. engine = "buildah" but buildah is not installed
            state = EngineState(self._settings.engine, False, detail=exc.message)
        else:
            if engine is None:
                state = EngineState("none", False, detail=NO_ENGINE)
            else:
                endpoint = getattr(engine, "endpoint", None)
                try:
                    state = EngineState(engine.name, True, await engine.version(), endpoint)
                except EnvcacheError as exc:
                    state = EngineState(engine.name, False, endpoint=endpoint, detail=exc.message)
        self._state = (time.monotonic(), state) if state.answers else None
        return state

    async def close(self) -> None:
        async with self._lock:
            if self._engine is not None:
                await self._engine.close()
                self._engine = None


def _identity(engine: Engine | None) -> tuple[str, str | None] | None:
    """Two detections found the same engine when kind and endpoint agree."""
    return None if engine is None else (engine.name, getattr(engine, "endpoint", None))


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
    offload: Offload                   # large definitions are parsed in its worker process
    wheels: Wheels
    pipelines: PipelineRuns


DAEMON = web.AppKey("envcache_daemon", Daemon)
