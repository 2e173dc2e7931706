"""``POST /api/v1/ensure``: a hit answers at once; a miss pulls or builds (single-flight) and
answers a build to follow — or, with ``wait``, the finished image."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from envcache.service import logs, requests
from envcache.service.ensure import BuildError
from envcache.service.schemas import Building, EnsureRequest, Ensured, ErrorBody, Failed
from envcache.service.views.common import Route, daemon, json_response


async def ensure(request: web.Request) -> web.Response:
    parts = daemon(request)
    body, raw = await requests.read(request, EnsureRequest)
    definition, environment = await parts.definitions.of_body(body, raw)
    variant = requests.variant(body.variant)
    outcome = await parts.ensurer.ensure(definition, variant, refresh=body.refresh, environment=environment,
                                         request_id=logs.request_id(request))
    parts.metrics.lookup(variant, hit=outcome.image is not None)
    host = request.host
    if outcome.image is not None:
        return json_response(Ensured("hit", outcome.image.model(host)))
    build = outcome.build
    assert build is not None
    if not body.wait:
        return json_response(Building("building", build.model(host)), status=202)
    # Shielded: this client hanging up must not cancel a build others (and the cache) want.
    with contextlib.suppress(BuildError):
        await asyncio.shield(build.wait())
    if build.state != "succeeded" or build.image is None:
        return json_response(Failed(ErrorBody(422, build.failure()), "failed",
                                    build.model(host)), status=422)
    return json_response(Ensured(build.outcome or "built", build.image.model(host), build.model(host)))


ROUTES = [Route("POST", "/api/v1/ensure", ensure,
                "Hit → the image; miss → pull or build (single-flight), answering a build to follow",
                body=EnsureRequest, responses={"200": Ensured, "202": Building, "422": Failed})]
