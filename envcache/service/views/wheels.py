"""``/api/v1/wheels``: private wheels — upload, list, show, remove — and their files.

The upload body is the wheel file itself (``application/octet-stream``, streamed to disk, any
size) and its file name comes as ``?filename=``: the name carries the project, version and tags
that the daemon checks against the wheel's own metadata.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from envcache.errors import InvalidInput, NotFound
from envcache.service import schemas
from envcache.service.schemas import path_param, query_param
from envcache.service.views.common import Route, daemon, json_response
from envcache.service.wheels import WheelUsers
from envcache.store import WheelRecord

CHUNK = 1 << 20
FILES = "/api/v1/wheels/files"


def file_path(record: WheelRecord) -> str:
    """Where the daemon serves a wheel: ``/api/v1/wheels/files/<sha256 hex>/<file name>``."""
    return f"{FILES}/{record.digest.split(':', 1)[1]}/{quote(record.filename)}"


def wheel_model(record: WheelRecord, request: web.Request) -> schemas.Wheel:
    """The API's wheel document; its URL and requirement name the daemon as the caller reached it."""
    url = f"{request.scheme}://{request.host}{file_path(record)}"
    return schemas.Wheel(record.digest, record.filename, record.name, record.version, list(record.tags),
                         record.requires_python, record.summary, record.size, record.created, url,
                         f"{record.name} @ {url}#sha256={record.digest.split(':', 1)[1]}")


def users_model(users: WheelUsers) -> schemas.WheelUsers:
    return schemas.WheelUsers(users.latest, users.older, users.images)


async def add(request: web.Request) -> web.Response:
    filename = request.query.get("filename")
    if not filename:
        raise InvalidInput("filename: give the wheel's file name as ?filename=NAME-VERSION-PY-ABI-PLATFORM.whl")
    record, created = await daemon(request).wheels.add(filename, request.content.iter_chunked(CHUNK))
    return json_response(schemas.WheelAdded(wheel_model(record, request), created), status=201 if created else 200)


async def listing(request: web.Request) -> web.Response:
    records = await daemon(request).wheels.list()
    return json_response(schemas.WheelList([wheel_model(r, request) for r in records]))


async def show(request: web.Request) -> web.Response:
    wheels = daemon(request).wheels
    record = await wheels.find(request.match_info["wheel"])
    users = await wheels.users(record.digest)
    return json_response(schemas.WheelDetails(wheel_model(record, request), users_model(users)))


async def remove(request: web.Request) -> web.Response:
    record, users = await daemon(request).wheels.remove(request.match_info["wheel"])
    return json_response(schemas.WheelRemoved(wheel_model(record, request), users_model(users), users.any))


async def file(request: web.Request) -> web.StreamResponse:
    """The wheel file (sendfile, ``Range`` honoured), or a redirect when blobs live elsewhere."""
    parts = daemon(request)
    record = await parts.wheels.find(request.match_info["sha256"])
    if record.digest != f"sha256:{request.match_info['sha256']}" or record.filename != request.match_info["filename"] \
            or not await parts.store.has_blob(record.digest):  # a file fsck had to quarantine is gone
        raise NotFound(f"no wheel {request.match_info['filename'][:120]!r} with that digest")
    url = parts.store.files.url_for(record.digest)
    if url is not None:
        raise web.HTTPTemporaryRedirect(url)
    path = parts.store.files.local_path(record.digest)
    assert path is not None  # a driver without local files hands out URLs
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


_WHEEL = path_param("wheel")
_WHEEL["description"] = "the wheel's sha256 digest (sha256:<hex> or <hex>) or its file name"

ROUTES = [
    Route("POST", "/api/v1/wheels", add, "Upload a private wheel (the body is the file); 201 new, 200 already there",
          body="application/octet-stream", responses={"201": schemas.WheelAdded, "200": schemas.WheelAdded},
          params=[query_param("filename", "string", required=True)]),
    Route("GET", "/api/v1/wheels", listing, "Every private wheel", responses={"200": schemas.WheelList}),
    Route("GET", "/api/v1/wheels/{wheel}", show, "One wheel, and what pins it", responses={"200": schemas.WheelDetails},
          params=[_WHEEL]),
    Route("DELETE", "/api/v1/wheels/{wheel}", remove,
          "Unlist a wheel; 409 while a registered environment's latest version pins it",
          responses={"200": schemas.WheelRemoved}, params=[_WHEEL]),
    Route("GET", FILES + "/{sha256}/{filename}", file, "The wheel file", responses={"200": "the wheel (a zip)"},
          params=[path_param("sha256"), path_param("filename")]),
]
