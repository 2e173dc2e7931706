"""``/api/v1/images``: cached images, and one by key (Azure's ``get_image_details``)."""

from __future__ import annotations

from aiohttp import web

from envcache.oci import parse_image_tag
from envcache.service import requests
from envcache.service.schemas import Image, Images, ImageHistory, ReplacedImage, path_param, query_param
from envcache.service.views.common import Route, daemon, json_response


async def listing(request: web.Request) -> web.Response:
    limit = requests.positive_int(request.query.get("limit", "1000"), "limit") or 1000
    found = await daemon(request).ensurer.images(limit)
    return json_response(Images([image.model(request.host) for image in found]))


async def details(request: web.Request) -> web.Response:
    """One image by key, or by its ``<key>-<variant>`` tag."""
    key, _variant = parse_image_tag(request.match_info["key"])
    return json_response((await daemon(request).ensurer.image(key)).model(request.host))


async def history(request: web.Request) -> web.Response:
    """The image a key names now, and those a refresh replaced (newest first)."""
    key, _variant = parse_image_tag(request.match_info["key"])
    parts = daemon(request)
    current = await parts.ensurer.image(key)
    host = request.host
    replaced = [ReplacedImage(f"{host}/{old.repository}@{old.manifest_digest}", old.repository, old.tag,
                              old.manifest_digest, old.size, old.created, old.replaced, old.lock)
                for old in await parts.store.images.history(key)]
    return json_response(ImageHistory(key, current.model(host), replaced))


ROUTES = [
    Route("GET", "/api/v1/images", listing, "Cached images, most recently used first", responses={"200": Images},
          params=[query_param("limit")]),
    Route("GET", "/api/v1/images/{key}", details, "Details of one image (Azure's get_image_details)",
          responses={"200": Image}, params=[path_param("key")]),
    Route("GET", "/api/v1/images/{key}/history", history,
          "The image a key names, and the images refreshes replaced (until gc expires them)",
          responses={"200": ImageHistory}, params=[path_param("key")]),
]
