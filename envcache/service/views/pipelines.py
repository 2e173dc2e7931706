"""``/api/v1/pipeline-runs`` and ``/api/v1/steps/{key}``: submit a frozen pipeline, follow its
report, and look at a stored step result (record, snapshot listing, log)."""

from __future__ import annotations

from aiohttp import web

from envcache.errors import NotFound
from envcache.pipeline.artifact import describe, stored_result
from envcache.service import requests
from envcache.service.schemas import (
    PipelineRun, PipelineRunRequest, StepDetails, StepOutput, path_param, query_param,
)
from envcache.service.views.common import Route, daemon, json_response
from envcache.wire import STEP_REPOSITORY


async def submit(request: web.Request) -> web.Response:
    body, _ = await requests.read(request, PipelineRunRequest)
    run = daemon(request).pipelines.submit(body)
    return json_response(run.model(), status=202)


async def state(request: web.Request) -> web.Response:
    return json_response(daemon(request).pipelines.get(request.match_info["id"]).model())


async def log(request: web.Request) -> web.StreamResponse:
    """The run's log (each line ``STEP | output``), text/plain, streamed until the run ends."""
    run = daemon(request).pipelines.get(request.match_info["id"])
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    if request.query.get("follow", "true") != "false":
        async for line in run.log.follow():
            await response.write(line.encode() + b"\n")
    else:
        await response.write("".join(line + "\n" for line in run.log.lines).encode())
    await response.write_eof()
    return response


async def step(request: web.Request) -> web.Response:
    store = daemon(request).store
    key = request.match_info["key"]
    result = await stored_result(store, key)
    if result is None:
        raise NotFound(f"no stored step result with key {key[:80]!r}")
    details = await describe(store, result)
    return json_response(StepDetails(
        key=result.key, step=result.step, image=f"{request.host}/{STEP_REPOSITORY}:{result.key}",
        digest=result.manifest_digest, created=result.created, last_used=result.last_used,
        outputs={name: StepOutput(tree, blob) for name, (tree, blob) in result.outputs.items()}, **details))


ROUTES = [
    Route("POST", "/api/v1/pipeline-runs", submit,
          "Run a frozen pipeline: each step reused (its key is stored) or run in its environment's image",
          body=PipelineRunRequest, responses={"202": PipelineRun}),
    Route("GET", "/api/v1/pipeline-runs/{id}", state, "A pipeline run's state and, once ended, its report",
          responses={"200": PipelineRun}, params=[path_param("id")]),
    Route("GET", "/api/v1/pipeline-runs/{id}/log", log,
          "The run's step output (STEP | line), text/plain, streamed until the run ends (follow=false: what there is)",
          responses={"200": "log lines"}, params=[path_param("id"), query_param("follow", "boolean")]),
    Route("GET", "/api/v1/steps/{key}", step, "A stored step result: outputs, record, snapshot listing, log",
          responses={"200": StepDetails}, params=[path_param("key")]),
]
