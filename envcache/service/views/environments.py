"""``/api/v1/environments``: register (a new version only for new content), list, get, versions,
and download as an Azure ML scaffold."""

from __future__ import annotations

import tempfile
from pathlib import Path

from aiohttp import web

from envcache.definition import write_azure_dir
from envcache.errors import InvalidInput
from envcache.service import requests
from envcache.service.environments import check_name
from envcache.service.schemas import (
    UNSET, Environment, Environments, RegisterRequest, Registered, Scaffold, Subject, Versions, path_param, query_param,
)
from envcache.service.views.common import Route, daemon, json_response


async def register(request: web.Request) -> web.Response:
    parts = daemon(request)
    body, _ = await requests.read(request, RegisterRequest)
    name = check_name(body.name if body.name is not UNSET else None)
    if body.definition is UNSET and body.document is UNSET:
        raise InvalidInput(Subject.MESSAGES["definition"])
    subject = Subject(document=body.document) if body.document is not UNSET and body.definition is UNSET \
        else Subject(definition=body.definition)
    definition, _ = await parts.definitions.of(subject)
    record, created = await parts.environments.register(name, definition)
    return json_response(Registered(record.model(), created), status=201 if created else 200)


async def listing(request: web.Request) -> web.Response:
    return json_response(Environments([r.model() for r in await daemon(request).environments.list()]))


async def get(request: web.Request) -> web.Response:
    version = requests.positive_int(request.query.get("version"), "version")
    return json_response((await daemon(request).environments.get(request.match_info["name"], version)).model())


async def versions(request: web.Request) -> web.Response:
    records = await daemon(request).environments.versions(request.match_info["name"])
    return json_response(Versions([r.model() for r in records]))


async def download(request: web.Request) -> web.Response:
    """The version as an Azure ML scaffold (``azureml_environment.json`` …), files as JSON."""
    version = requests.positive_int(request.query.get("version"), "version")
    record = await daemon(request).environments.get(request.match_info["name"], version)
    definition = record.as_definition()
    definition.name, definition.version = record.name, str(record.version)
    with tempfile.TemporaryDirectory(prefix="envcache-scaffold-") as tmp:
        write_azure_dir(definition, Path(tmp))
        files = {p.relative_to(tmp).as_posix(): p.read_text(encoding="utf-8")
                 for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
    return json_response(Scaffold(record.name, record.version, files))


ROUTES = [
    Route("POST", "/api/v1/environments", register,
          "Register: a new version only when the content hash changes; envcache- names are reserved",
          body=RegisterRequest, responses={"201": Registered, "200": Registered}),
    Route("GET", "/api/v1/environments", listing, "Latest version of every environment, curated ones first",
          responses={"200": Environments}),
    Route("GET", "/api/v1/environments/{name}", get, "One version (latest by default)", responses={"200": Environment},
          params=[path_param("name"), query_param("version")]),
    Route("GET", "/api/v1/environments/{name}/versions", versions, "Every version", responses={"200": Versions},
          params=[path_param("name")]),
    Route("GET", "/api/v1/environments/{name}/download", download,
          "The version as an Azure ML scaffold: {files: {path: text}}", responses={"200": Scaffold},
          params=[path_param("name"), query_param("version")]),
]
