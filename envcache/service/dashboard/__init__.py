"""The dashboard: server-rendered pages under ``/ui/`` over the daemon's own parts.

WHY server-rendered (Jinja2, autoescaped) with two small static files and a vendored chart
library (uPlot, 51 KB): ``pip install -e .`` stays the whole set-up — no Node toolchain, no CDN,
nothing fetched at run time — and every page is one request whose HTML already holds its data.
JavaScript only draws the charts from JSON embedded in the page and follows a running build's
log (the JSON API's streamed ``/api/v1/builds/{id}/log``); without it every page still reads.

One module per resource, like the JSON API's views: :mod:`.overview` (counts, charts, storage,
slowest builds), :mod:`.environments` (with the diff between versions), :mod:`.images`,
:mod:`.builds`, :mod:`.login`. Listings page by keyset, so the hundredth page of 10,000
environments costs what the first does.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from envcache.errors import EnvcacheError
from envcache.service.dashboard import builds, environments, images, login, overview
from envcache.service.dashboard.render import PAGES, Handler, Pages, page
from envcache.service.dashboard.storage import StorageMonitor

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
ROUTES = [*overview.ROUTES, *environments.ROUTES, *images.ROUTES, *builds.ROUTES, *login.ROUTES]
# Pages read only what the daemon serves itself; the live log is a same-origin fetch.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@web.middleware
async def html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Dashboard failures as pages (a 404 for an unknown build, a 400 for a bad page cursor),
    never a traceback; every dashboard response gets the security headers."""
    if not request.path.startswith("/ui/"):
        return await handler(request)
    try:
        response = await handler(request)
    except EnvcacheError as exc:
        response = page(request, "error.html", status=exc.http_status, code=exc.http_status, message=exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = page(request, "error.html", status=exc.status, code=exc.status,
                        message="no such page" if exc.status == 404 else exc.reason)
    except Exception:  # a bug of ours: logged, shown as a page, the daemon keeps serving
        log.exception("internal error on %s %s", request.method, request.path)
        response = page(request, "error.html", status=500, code=500, message="internal error (see the daemon log)")
    if request.path.startswith("/ui/static/"):
        response.headers["Cache-Control"] = "public, max-age=3600"
    else:
        response.headers.update(_HEADERS)
    return response


async def _home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


def setup(app: web.Application) -> None:
    """Mount the pages, their static files and ``/`` → ``/ui/``."""
    app[PAGES] = Pages(StorageMonitor())
    app.middlewares.append(html_errors)
    app.on_shutdown.append(lambda app: app[PAGES].storage.close())
    app.router.add_get("/", _home)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.router.add_static("/ui/static/", STATIC)
