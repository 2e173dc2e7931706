"""``POST /api/v1/warm``: ensure many definitions (optionally several variants) with bounded
concurrency; per-item outcome (hit/pulled/built/failed) and seconds."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from aiohttp import web

from envcache.errors import EnvcacheError
from envcache.service import requests
from envcache.service.offload import LARGE_BODY
from envcache.service.schemas import UNSET, WarmRequest, WarmResult, Warmed
from envcache.service.views.common import Route, daemon, json_response


async def warm(request: web.Request) -> web.Response:
    parts = daemon(request)
    body, raw = await requests.read(request, WarmRequest)
    variants = list(dict.fromkeys(requests.variant(v) for v in body.variants))
    # Parse everything first (once; every variant shares it): a typo in item 40 should fail the
    # request, not half a warm-up.
    parsed = []
    for index, item in enumerate(body.items):
        label = str(item.label) if item.label is not UNSET else f"items[{index}]"
        parsed.append((label, await parts.definitions.of(item, f"items[{index}]: ", large=len(raw) >= LARGE_BODY)))
    gate = asyncio.Semaphore(body.concurrency)

    async def one(label: str, subject: tuple[Any, tuple[str, int] | None], variant: str) -> WarmResult:
        async with gate:
            began = time.monotonic()
            result = WarmResult(label=label, variant=variant, outcome="failed", seconds=0.0)
            try:
                definition, environment = subject
                outcome = await parts.ensurer.ensure(definition, variant, refresh=body.refresh, environment=environment)
                parts.metrics.lookup(variant, hit=outcome.image is not None)
                if outcome.image is not None:
                    result.outcome, result.image = "hit", outcome.image.model(request.host)
                else:
                    build = outcome.build
                    assert build is not None
                    result.build = build.id
                    image = await asyncio.shield(build.wait())
                    result.outcome, result.image = build.outcome or "built", image.model(request.host)
            except EnvcacheError as exc:
                result.outcome, result.error = "failed", exc.message
            result.seconds = round(time.monotonic() - began, 3)
            return result

    results = await asyncio.gather(*(one(label, subject, v) for label, subject in parsed for v in variants))
    summary = dict(Counter(result.outcome for result in results))
    return json_response(Warmed(list(results), summary, "failed" not in summary))


ROUTES = [Route("POST", "/api/v1/warm", warm,
                "Ensure many definitions with bounded concurrency; per-item outcome hit/pulled/built/failed + seconds",
                body=WarmRequest, responses={"200": Warmed})]
