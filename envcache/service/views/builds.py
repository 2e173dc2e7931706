"""``/api/v1/builds/{id}``: a build's state, its log (streamed while it runs), its environment."""

from __future__ import annotations

from aiohttp import web

from envcache.errors import NotFound
from envcache.service.schemas import Build, Environment, path_param, query_param
from envcache.service.views.common import Route, daemon, json_response


async def state(request: web.Request) -> web.Response:
    build = await daemon(request).ensurer.get_build(request.match_info["id"])
    return json_response(build.model(request.host))


async def log(request: web.Request) -> web.StreamResponse:
    """The build log as plain text, streamed line by line while the build runs."""
    build = await daemon(request).ensurer.get_build(request.match_info["id"])
    follow = request.query.get("follow", "true") != "false"
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8", "X-Build-Id": build.id})
    response.enable_chunked_encoding()
    await response.prepare(request)
    if follow:
        async for line in build.follow():
            await response.write(line.encode() + b"\n")
    else:
        await response.write("".join(line + "\n" for line in build.lines).encode())
    await response.write_eof()
    return response


async def environment(request: web.Request) -> web.Response:
    parts = daemon(request)
    build = await parts.ensurer.get_build(request.match_info["id"])
    if not build.env_name:
        raise NotFound(f"build {build.id} was not started from a registered environment")
    record = await parts.environments.get(build.env_name, build.env_version)
    return json_response(record.model())


ROUTES = [
    Route("GET", "/api/v1/builds/{id}", state, "State of a build", responses={"200": Build}, params=[path_param("id")]),
    Route("GET", "/api/v1/builds/{id}/log", log,
          "The build log, text/plain, streamed until the build ends (follow=false: what there is now)",
          responses={"200": "log lines"}, params=[path_param("id"), query_param("follow", "boolean")]),
    Route("GET", "/api/v1/builds/{id}/environment", environment,
          "The registered environment version a build was started from", responses={"200": Environment},
          params=[path_param("id")]),
]
