"""``POST /api/v1/resolve``: lookup only — the cached image for a definition, or 404 (miss).

The hot path: build tools call it before every job. One parse per distinct body (memoised),
the base digest from memory, two indexed store reads.
"""

from __future__ import annotations

from aiohttp import web

from envcache.service import requests
from envcache.service.schemas import ErrorBody, Hit, Miss, ResolveRequest
from envcache.service.views.common import Route, daemon, json_response


async def resolve(request: web.Request) -> web.Response:
    parts = daemon(request)
    body, raw = await requests.read(request, ResolveRequest)
    definition, _ = await parts.definitions.of_body(body, raw)
    variant = requests.variant(body.variant)
    prepared = await parts.ensurer.prepare(definition, variant)
    image = await parts.ensurer.lookup(prepared)
    if image is None:
        parts.metrics.lookup(variant, hit=False)
        return json_response(Miss(error=ErrorBody(404, f"no cached image for this definition ({variant})"),
                                  status="miss", key=prepared.key, variant=variant, spec_hash=prepared.spec_hash),
                             status=404)
    parts.metrics.lookup(variant, hit=True)
    return json_response(Hit("hit", image.model(request.host)))


ROUTES = [Route("POST", "/api/v1/resolve", resolve, "Lookup only: the cached image for a definition, or 404 (status=miss)",
                body=ResolveRequest, responses={"200": Hit, "404": Miss})]
