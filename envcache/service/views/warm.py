"""``POST /api/v1/warm``: ensure many definitions (optionally several variants) with bounded
concurrency; per-item outcome (hit/pulled/built/failed) and seconds.

With ``Accept: application/x-ndjson`` the answer is the work as it happens, one JSON object per
line: ``{"event": "started", "label", "variant"}`` and ``{"event": "finished", "result": {…}}``
per item, ``{"event": "running", "items": [{"label", "variant", "seconds"}]}`` whenever nothing
else was said for a few seconds, and ``{"event": "report", "report": {…}}`` last — the same
report the plain JSON answer is. ``envcache warm`` reads it to show each item as it starts and
ends.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from envcache.errors import EnvcacheError
from envcache.progress import Ticker
from envcache.service import logs, requests
from envcache.service.offload import LARGE_BODY
from envcache.service.schemas import UNSET, WarmRequest, WarmResult, Warmed
from envcache.service.views.common import Route, daemon, json_response

EVENTS = "application/x-ndjson"

Event = dict[str, Any]


async def warm(request: web.Request) -> web.StreamResponse:
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
    running: dict[tuple[str, str], float] = {}

    async def one(label: str, subject: tuple[Any, tuple[str, int] | None], variant: str,
                  say: Callable[[Event], None]) -> WarmResult:
        async with gate:
            began = time.monotonic()
            running[label, variant] = began
            say({"event": "started", "label": label, "variant": variant})
            result = WarmResult(label=label, variant=variant, outcome="failed", seconds=0.0)
            try:
                definition, environment = subject
                outcome = await parts.ensurer.ensure(definition, variant, refresh=body.refresh, environment=environment,
                                                      request_id=logs.request_id(request))
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
            del running[label, variant]
            say({"event": "finished", "result": result})
            return result

    def run_all(say: Callable[[Event], None]) -> asyncio.Future[list[WarmResult]]:
        return asyncio.gather(*(one(label, subject, v, say) for label, subject in parsed for v in variants))

    if EVENTS not in request.headers.get("Accept", ""):
        return json_response(_report(await run_all(lambda event: None)))
    return await _stream(request, run_all, running)


def _report(results: list[WarmResult]) -> Warmed:
    summary = dict(Counter(result.outcome for result in results))
    return Warmed(list(results), summary, "failed" not in summary)


async def _stream(request: web.Request, run_all: Callable[[Callable[[Event], None]], asyncio.Future[list[WarmResult]]],
                  running: dict[tuple[str, str], float]) -> web.StreamResponse:
    """The events of :func:`warm`, written as they happen; the report last."""
    response = web.StreamResponse(headers={"Content-Type": EVENTS})
    await response.prepare(request)
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    def still_running(ticker: Ticker) -> str | None:
        now = time.monotonic()
        items = [{"label": label, "variant": variant, "seconds": round(now - began, 1)}
                 for (label, variant), began in running.items()]
        return msgspec.json.encode({"event": "running", "items": items}).decode() if items else None

    async with Ticker(lambda line: lines.put_nowait(line.encode()), still_running) as say_line:
        work = run_all(lambda event: say_line(msgspec.json.encode(event).decode()))
        work.add_done_callback(lambda _: lines.put_nowait(None))
        try:
            while (line := await lines.get()) is not None:
                await response.write(line + b"\n")
        finally:
            if not work.done():  # the client left: stop waiting (the builds go on, the cache wants them)
                work.cancel()
    await response.write(msgspec.json.encode({"event": "report", "report": _report(work.result())}) + b"\n")
    await response.write_eof()
    return response


ROUTES = [Route("POST", "/api/v1/warm", warm,
                "Ensure many definitions with bounded concurrency; per-item outcome hit/pulled/built/failed + seconds "
                f"(with Accept: {EVENTS}, one JSON event per line as items start and finish, the report last)",
                body=WarmRequest, responses={"200": Warmed})]
