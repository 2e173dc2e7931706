"""Templates and what every page shares: the Jinja2 environment and its filters, the page
helper, and the keyset cursors listings page with."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import jinja2
from aiohttp import web

from envcache import __version__
from envcache.errors import InvalidInput
from envcache.service.auth import AUTH, COOKIE
from envcache.service.dashboard.storage import StorageMonitor

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = tuple[str, str, Handler]
PAGE_SIZE = 50


def human_bytes(size: int | float | None) -> str:
    """``1536`` → ``1.5 KiB``."""
    if size is None:
        return "—"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def duration(seconds: float | None) -> str:
    """``75.2`` → ``1m 15s``; sub-second values keep a decimal."""
    if seconds is None or seconds < 0:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def ago(when: float | None, now: float | None = None) -> str:
    """How long ago ``when`` was, in the largest unit that fits (``3 min ago``)."""
    if not when:
        return "never"
    delta = (time.time() if now is None else now) - when
    if delta < 5:
        return "just now"
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= seconds:
            return f"{math.floor(delta / seconds)} {unit} ago"
    return f"{int(delta)} s ago"


def timestamp(when: float | None) -> str:
    """UTC, to the second, for ``title`` attributes and ``<time datetime>``."""
    if not when:
        return ""
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def short(value: str | None, length: int = 12) -> str:
    """A digest or key shortened for a table cell (``sha256:`` dropped)."""
    if not value:
        return "—"
    return value.split(":", 1)[-1][:length]


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("envcache.service.dashboard", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,   # a misspelt variable is an error in the tests, not a blank
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(bytes=human_bytes, duration=duration, ago=ago, timestamp=timestamp, short=short)
_ENV.globals.update(version=__version__)


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
        section=section, signed_in=guarded and COOKIE in request.cookies, now=time.time(), **context)
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
