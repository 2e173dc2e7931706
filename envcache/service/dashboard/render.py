"""Templates and what every page shares: the Jinja2 environment, the page helper, and the
keyset cursors listings page with."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jinja2
from aiohttp import web

from envcache import __version__
from envcache.errors import InvalidInput
from envcache.service.auth import AUTH, COOKIE
from envcache.service.dashboard.cells import (
    ago, build_subject, build_time, duration, hash_chip, human_bytes, short, state_badge, timestamp, variant_link, when,
)
from envcache.service.dashboard.storage import StorageMonitor

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = tuple[str, str, Handler]
PAGE_SIZE = 50

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("envcache.service.dashboard", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,   # a misspelt variable is an error in the tests, not a blank
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(bytes=human_bytes, duration=duration, ago=ago, timestamp=timestamp, short=short)
_ENV.globals.update(version=__version__, when=when, hash=hash_chip, badge=state_badge, build_time=build_time,
                    build_subject=build_subject, variant_link=variant_link)


@dataclass
class Pages:
    """The dashboard's own state in an app: the storage picture's cache and the variant hashes
    of environment versions (a version never changes, so its hashes are computed once)."""

    storage: StorageMonitor
    variant_hashes: dict[str, dict[str, str]] = field(default_factory=dict)


PAGES = web.AppKey("envcache_dashboard", Pages)


def pages(request: web.Request) -> Pages:
    return request.app[PAGES]


def page(request: web.Request, template: str, *, status: int = 200, section: str = "",
         **context: Any) -> web.Response:
    """Render ``template`` with what every page shows (version, which section the user is in,
    whether they signed in)."""
    guarded = request.app.get(AUTH) is not None
    body = _ENV.get_template(template).render(
        section=section, signed_in=guarded and COOKIE in request.cookies, **context)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


# -- keyset cursors ------------------------------------------------------------------------------
def cursor(when: float, ident: str) -> str:
    """A page boundary: a time and the id that breaks ties (``1712345678.25~abc``)."""
    return f"{when!r}~{ident}"


def parse_cursor(text: str | None, name: str) -> tuple[float, str] | None:
    """The boundary a ``cursor`` wrote; InvalidInput (a 400 page) naming ``name`` otherwise."""
    if not text:
        return None
    when, sep, ident = text.partition("~")
    try:
        value = float(when)
    except ValueError:
        value = math.nan
    if not sep or not ident or not math.isfinite(value) or len(ident) > 200:
        raise InvalidInput(f"{name} must be a page cursor as the dashboard writes it (time~id), not {text[:80]!r}")
    return value, ident
