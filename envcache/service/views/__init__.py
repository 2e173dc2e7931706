"""The JSON API under ``/api/v1/``: one module per resource, each a list of routes whose handlers
are thin (datasette's ``views/`` is the model): read the request's model, ask the daemon's
parts, answer with a response model. The OpenAPI document is generated from the same routes and
models (:mod:`envcache.service.schemas`).

Every error leaves as JSON (``{"error": {"status", "message"}}``) with a 4xx status when the
caller caused it; a bug still answers JSON 500 and the daemon keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from envcache import __version__
from envcache.errors import EnvcacheError
from envcache.service.schemas import openapi_document as _document
from envcache.service.views import (
    builds, ensure, environments, gc, health, images, pipelines, resolve, simple_index, warm, wheels,
)
from envcache.service.views.common import Route, json_response
from envcache.wire import error_body

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(__version__))


ROUTES: list[Route] = [
    *health.ROUTES,
    Route("GET", "/api/v1/openapi.json", openapi, "This document", responses={"200": dict}),
    *resolve.ROUTES, *ensure.ROUTES, *builds.ROUTES, *images.ROUTES, *environments.ROUTES, *warm.ROUTES,
    *gc.ROUTES, *wheels.ROUTES, *simple_index.ROUTES, *pipelines.ROUTES,
]


def openapi_document(version: str) -> dict:
    """OpenAPI 3.1 of every route above, from their models."""
    return _document(version, [(r.method, r.path, r.summary, r.spec) for r in ROUTES])


def _error(status: int, message: str) -> web.Response:
    return web.json_response(error_body(status, message), status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure of an /api/ request into a JSON answer; nothing escapes as HTML/500."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except EnvcacheError as exc:
        return _error(exc.http_status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason if exc.status != 404 else f"no such endpoint: {request.method} {request.path}")
    except web.RequestPayloadError as exc:  # a body that cannot be read (bad gzip, cut short)
        return _error(400, f"request body could not be read: {str(exc).splitlines()[-1].strip() or exc}")
    except RecursionError:  # JSON/YAML nested past Python's recursion limit, wherever it was parsed
        return _error(400, "request body is nested too deeply")
    except asyncio.CancelledError:
        raise
    except Exception:  # a bug of ours: log it, answer JSON, keep serving
        log.exception("internal error on %s %s", request.method, request.path)
        return _error(500, "internal error (see the daemon log)")


def setup(app: web.Application) -> None:
    """Mount every route and the error middleware."""
    app.middlewares.append(json_errors)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
