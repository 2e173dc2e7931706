"""``POST /api/v1/resolve``: lookup only — the cached image for a definition, or 404 (miss).

The hot path: build tools call it before every job. One parse per distinct body (memoised),
the base digest from memory, two indexed store reads.

For build tools that cannot afford starting Python, the body may be the definition's own files
(:func:`envcache.service.requests.files_read`), and ``Accept: text/plain`` answers the bare image
reference (a miss: 404 and one line saying so), so one ``curl -f`` is the whole client.
"""

from __future__ import annotations

from aiohttp import web

from envcache.service import requests
from envcache.service.schemas import ErrorBody, Hit, Miss, ResolveRequest
from envcache.service.views.common import Route, daemon, json_response


async def resolve(request: web.Request) -> web.Response:
    parts = daemon(request)
    read = requests.files_read if requests.sends_files(request) else requests.read
    body, raw = await read(request, ResolveRequest)
    definition, _ = await parts.definitions.of_body(body, raw)
    variant = requests.variant(body.variant)
    prepared = await parts.ensurer.prepare(definition, variant)
    image = await parts.ensurer.lookup(prepared)
    text = TEXT in request.headers.get("Accept", "")
    if image is None:
        parts.metrics.lookup(variant, hit=False)
        message = f"no cached image for this definition ({variant})"
        if text:
            return web.Response(text=f"miss: {message}\n", status=404, content_type=TEXT)
        return json_response(Miss(error=ErrorBody(404, message), status="miss", key=prepared.key, variant=variant,
                                  spec_hash=prepared.spec_hash), status=404)
    parts.metrics.lookup(variant, hit=True)
    model = image.model(request.host)
    if text:
        return web.Response(text=model.image + "\n", content_type=TEXT)
    return json_response(Hit("hit", model))


TEXT = "text/plain"

ROUTES = [Route("POST", "/api/v1/resolve", resolve,
                "Lookup only: the cached image for a definition, or 404 (status=miss). The body may also be the "
                "definition's own file (?path=NAME, ?format=, ?variant=) or files (multipart/form-data), and "
                "Accept: text/plain answers the bare image reference",
                body=ResolveRequest, responses={"200": Hit, "404": Miss})]
