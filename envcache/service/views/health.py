"""``GET /api/v1/health``: liveness, version, build queue, upstream counts, the build engine (public)."""

from __future__ import annotations

from aiohttp import web

from envcache import __version__
from envcache.service.schemas import EngineHealth, Health
from envcache.service.views.common import Route, daemon, json_response


async def health(request: web.Request) -> web.Response:
    parts = daemon(request)
    upstream = await parts.upstream.status()
    engine = await parts.engine.state()
    return json_response(Health(
        status="ok", version=__version__, queue_depth=parts.ensurer.queue_depth(),
        builds_running=parts.ensurer.running(), recipe_version=parts.ensurer.recipe_version,
        # Counts only (health is public): details are in `envcache upstream list`.
        upstream={"configured": len(upstream["upstreams"]), "pulls": upstream["counters"],
                  "pushes": upstream["pushes"]["counts"], "recent_errors": len(upstream["last_errors"])},
        engine=EngineHealth(engine.name, engine.answers, engine.version, engine.detail, engine.describe()),
    ))


ROUTES = [Route("GET", "/api/v1/health", health, "Liveness, version, build queue", responses={"200": Health})]
