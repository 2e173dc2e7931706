"""The daemon's aiohttp application: one store, the OCI registry under /v2/, the JSON API."""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator

from aiohttp import web

from envcache.registry import routes as registry_routes
from envcache.service import api, auth
from envcache.service.config import Config
from envcache.store import Store


def create_app(config: Config) -> web.Application:
    """Build the application; the store opens here (usable before serving) and closes on cleanup."""
    # Bodies are streamed by the registry handlers themselves; this cap only applies to
    # handlers that call request.read()/json() (manifests, the JSON API).
    app = web.Application(client_max_size=8 * 1024 * 1024)
    with warnings.catch_warnings():
        # The agreed interface names these string keys; aiohttp would prefer AppKey objects.
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["config"] = config
        app["store"] = Store(config.server.data_dir)
    # Registered first so that its clean-up (closing the store) runs last, after every
    # cleanup_ctx the API and upstream add later has finished with the store.
    app.cleanup_ctx.append(_lifecycle)
    # Order matters: auth first (it refuses an unsafe bind and installs the token middleware
    # before any route can answer), then the registry, then the JSON API and its machinery.
    try:
        auth.setup(app)
        registry_routes.setup(app, app["store"])
        api.setup(app)
    except BaseException:
        app["store"].close()  # release the data directory's lock for whoever tries next
        raise
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Expire idle upload sessions in the background; close the store at shutdown."""
    ttl = app["config"].registry.upload_session_ttl
    task = asyncio.create_task(_expire_uploads(app, ttl))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    app["store"].close()


async def _expire_uploads(app: web.Application, ttl: int) -> None:
    while True:
        registry_routes.expire_uploads(app, ttl)
        await asyncio.sleep(min(60.0, max(ttl / 4, 1.0)))
