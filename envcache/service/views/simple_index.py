"""``/api/v1/wheels/simple/``: the private wheels as a Python package index, PEP 503 (HTML) and
PEP 691 (JSON), API version 1.1 (PEP 700: ``versions``, ``size``, ``upload-time``).

pip, uv and any installer take it as ``--index-url`` / ``--extra-index-url``. The format
follows the request's ``Accept`` header (q-values honoured; no header means HTML, as PEP 691
asks for old clients); file links are relative and carry ``#sha256=``.
"""

from __future__ import annotations

import datetime
import html
import json
from urllib.parse import quote

import mimeparse
from aiohttp import web
from packaging.utils import canonicalize_name
from packaging.version import Version

from envcache.errors import EnvcacheError
from envcache.service.schemas import path_param
from envcache.service.views.common import Route, daemon
from envcache.service.views.wheels import file_path
from envcache.store import WheelRecord

ROOT = "/api/v1/wheels/simple/"
API_VERSION = "1.1"
JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
# mimeparse picks the last of equally good matches, so ``*/*`` gets plain HTML, as old clients expect.
_OFFERED = [JSON_V1, HTML_V1, "text/html"]


class NotAcceptable(EnvcacheError):
    http_status = 406


def _negotiate(request: web.Request) -> str:
    accept = request.headers.get("Accept", "").replace(".latest+", ".v1+")  # PEP 691: "latest" is v1 today
    if not accept.strip():
        return "text/html"
    chosen = mimeparse.best_match(_OFFERED, accept)
    if not chosen:
        raise NotAcceptable(f"the index answers {', '.join(_OFFERED)}; the request accepts none of them")
    return chosen


def _answer(request: web.Request, chosen: str, data: dict, title: str, links: list[tuple[str, str, str | None]]) -> web.Response:
    """``data`` as PEP 691 JSON, or ``links`` (href, text, requires-python) as PEP 503 HTML."""
    headers = {"Vary": "Accept", "Content-Type": chosen}
    if chosen == JSON_V1:
        return web.Response(body=json.dumps(data).encode(), headers=headers)
    anchors = "".join(
        f'<a href="{html.escape(href)}"'
        + (f' data-requires-python="{html.escape(requires)}"' if requires else "")
        + f">{html.escape(text)}</a><br/>\n" for href, text, requires in links)
    page = (f'<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="{API_VERSION}">'
            f"<title>{html.escape(title)}</title></head>\n<body><h1>{html.escape(title)}</h1>\n{anchors}</body></html>\n")
    return web.Response(body=page.encode(), headers={**headers, "Content-Type": f"{chosen}; charset=utf-8"})


async def root(request: web.Request) -> web.Response:
    chosen = _negotiate(request)
    names = sorted({wheel.name for wheel in await daemon(request).wheels.list()})
    return _answer(request, chosen, {"meta": {"api-version": API_VERSION}, "projects": [{"name": n} for n in names]},
                   "Simple index", [(f"{n}/", n, None) for n in names])


async def project(request: web.Request) -> web.Response:
    name = request.match_info["project"]
    if canonicalize_name(name) != name:  # PEP 503: one URL per project, the normalised name
        raise web.HTTPMovedPermanently(f"{ROOT}{quote(canonicalize_name(name))}/")
    chosen = _negotiate(request)
    records = await daemon(request).wheels.project(name)
    files = [_file(record) for record in records]
    data = {"meta": {"api-version": API_VERSION}, "name": name, "versions": _versions(records), "files": files}
    return _answer(request, chosen, data, f"Links for {name}",
                   [(f"{f['url']}#sha256={f['hashes']['sha256']}", f["filename"], f.get("requires-python"))
                    for f in files])


def _file(record: WheelRecord) -> dict:
    """A PEP 691 file entry; the URL is relative to the project page (``…/simple/<name>/``)."""
    entry = {"filename": record.filename, "url": f"../..{file_path(record).removeprefix('/api/v1/wheels')}",
             "hashes": {"sha256": record.digest.split(":", 1)[1]}, "size": record.size,
             "upload-time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).strftime(
                 "%Y-%m-%dT%H:%M:%S.%fZ")}
    if record.requires_python:
        entry["requires-python"] = record.requires_python
    return entry


def _versions(records: list[WheelRecord]) -> list[str]:
    return sorted({r.version for r in records}, key=Version)  # PEP 440 normal forms (checked at upload)


ROUTES = [
    Route("GET", ROOT, root, "PEP 503/691 simple index of the private wheels (by Accept)",
          responses={"200": "PEP 503 HTML or PEP 691 JSON, as the Accept header asks"}),
    Route("GET", ROOT + "{project}/", project, "One project's wheels in the simple index (by Accept)",
          responses={"200": "PEP 503 HTML or PEP 691 JSON, as the Accept header asks"},
          params=[path_param("project")]),
]
