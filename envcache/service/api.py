"""The JSON API under ``/api/v1/``: resolve, ensure, builds, images, environments, warm, health.

Every error leaves as JSON (``{"error": {"status", "message"}}``) with a 4xx status when the
caller caused it; a bug still answers JSON 500 and the daemon keeps serving. Bodies are capped
well below the registry's limit because a definition is small and a huge one is an attack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import tempfile
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash
from aiohttp import web

from envcache import __version__
from envcache import definition as spec
from envcache.client.files import check_files
from envcache.errors import EnvcacheError, InvalidInput, NotFound
from envcache.service import metrics as metrics_mod
from envcache.service.ensure import Build, BuildError, Ensurer, Outcome
from envcache.service.environments import Environments, check_name
from envcache.service.keys import BaseDigestResolver
from envcache.service.openapi import openapi_document
from envcache.service.wiring import ENGINE, EngineHandle, make_builder, make_resolvers, recipe_version, resolve_auto_variant
from envcache.store.gc import gc_handler
from envcache.upstream import wiring as upstream_wiring

if TYPE_CHECKING:
    from envcache.definition.model import Definition

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # one definition, or a warm list of a few hundred
MAX_WARM_ITEMS = 1000
ENSURER = web.AppKey("envcache_ensurer", Ensurer)
_VARIANTS = ("cpu", "gpu", "auto")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(code: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"status": code, "message": message}, **extra}, status=code)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure of an /api/ request into a JSON answer; nothing escapes as HTML/500."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except EnvcacheError as exc:
        return _error(exc.http_status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason if exc.status != 404 else f"no such endpoint: {request.method} {request.path}")
    except web.RequestPayloadError as exc:  # a body that cannot be read (bad gzip, cut short)
        return _error(400, f"request body could not be read: {str(exc).splitlines()[-1].strip() or exc}")
    except RecursionError:  # JSON/YAML nested past Python's recursion limit, wherever it was parsed
        return _error(400, "request body is nested too deeply")
    except asyncio.CancelledError:
        raise
    except Exception:  # a bug of ours: log it, answer JSON, keep serving
        log.exception("internal error on %s %s", request.method, request.path)
        return _error(500, "internal error (see the daemon log)")


async def _raw_body(request: web.Request) -> bytes:
    """The request body, read with a hard size cap."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=len(raw))
    return raw


async def _body(request: web.Request, raw: bytes | None = None) -> dict[str, Any]:
    """The request's JSON object, read with a hard size cap."""
    if raw is None:
        raw = await _raw_body(request)
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    if (b"\\ud" in raw or b"\\uD" in raw) and _has_lone_surrogate(data):
        # JSON may spell half a UTF-16 pair (\ud800); such a string cannot be written to a file,
        # SQLite or a log line later, so it is refused here, where the caller can still be told.
        raise InvalidInput("request body contains a lone UTF-16 surrogate (\\ud800-\\udfff): not valid Unicode text")
    return data


def _has_lone_surrogate(data: Any) -> bool:
    """True if a string in ``data`` holds half a UTF-16 pair, which UTF-8 cannot encode.

    Data nested too deeply raises RecursionError here, answered as a 400 by :func:`json_errors`.
    """
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class _DefinitionMemo:
    """Definitions recently parsed from resolve/ensure bodies, by the body's xxh3-128.

    WHY: build tools ask about the same few definitions over and over; parsing, validating and
    (for raw files) loading them again is most of a hit's server time. Only bodies that name
    their definition inline are kept (an ``environment`` reference can move to a new version).
    A memoised Definition is never mutated (``for_variant`` copies it), and every hit still
    canonicalises it and compares the stored canonical bytes, so the memo cannot hand out a
    wrong image.
    """

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: OrderedDict[bytes, Definition] = OrderedDict()

    def get(self, digest: bytes) -> Definition | None:
        definition = self._items.get(digest)
        if definition is not None:
            self._items.move_to_end(digest)
        return definition

    def put(self, digest: bytes, definition: Definition) -> None:
        self._items[digest] = definition
        if len(self._items) > self._size:
            self._items.popitem(last=False)


ENVIRONMENTS = web.AppKey("envcache_environments", Environments)
MEMO = web.AppKey("envcache_definition_memo", _DefinitionMemo)


async def _subject(request: web.Request) -> tuple[dict[str, Any], Definition, tuple[str, int] | None]:
    """(body, Definition, environment) of a resolve/ensure request, parsed once per distinct body."""
    raw = await _raw_body(request)
    data = await _body(request, raw)
    if "definition" not in data and "document" not in data:
        definition, environment = _definition(request.app, data)
        return data, definition, environment
    memo = request.app[MEMO]
    digest = xxhash.xxh3_128_digest(raw)
    definition = memo.get(digest)
    if definition is None:
        definition, _ = _definition(request.app, data)
        memo.put(digest, definition)
    return data, definition, None


def _load_files(item: Any, where: str) -> Definition:
    """A Definition from raw files (``document``), loaded by the same loaders as a local file.

    The files go into a private temporary directory (after :func:`check_files` has made sure
    nothing they include points outside it); messages name them as the client does.
    """
    if isinstance(item, dict) and isinstance(item.get("files"), dict):
        for name, text in item["files"].items():
            if isinstance(text, str):
                _check_yaml_aliases(f"{where}document.files[{name[:80]!r}]", text)
    document = check_files(item)
    with tempfile.TemporaryDirectory(prefix="envcache-document-") as tmp:
        for name, text in document.files.items():
            target = Path(tmp, name)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
            except OSError as exc:  # a name too long for the file system, a file where a directory goes
                raise InvalidInput(f"{where}document.files[{name[:80]!r}]: cannot be written as a file: "
                                   f"{exc.strerror or exc}") from None
        try:
            return spec.load_definition(Path(tmp, document.path), document.format)
        except EnvcacheError as exc:
            message = exc.message
        except (TypeError, ValueError, KeyError, AttributeError) as exc:  # belt and braces: bad input is a 400
            message = f"invalid definition: {exc}"
    shown = document.display_root
    message = message.replace(tmp + "/", shown.rstrip("/") + "/" if shown else "").replace(tmp, shown or ".")
    raise InvalidInput(f"{where}{message}")


MAX_YAML_NODES = 100_000  # far beyond any real definition; a "billion laughs" file is far beyond it


def _check_yaml_aliases(field: str, text: str) -> None:
    """Refuse YAML whose aliases loop back into themselves or expand past :data:`MAX_YAML_NODES`.

    WHY: the loaders walk the parsed data as a tree, so a recursive alias (``a: &a [*a]``) or a
    few nested aliases ("billion laughs", billions of nodes) would tie up the daemon's event
    loop for every client. A definition never needs that; the node graph is checked here at the
    boundary, counting each shared node once per use, before anything walks it. Only files
    that use both anchors and aliases pay.
    """
    if "&" not in text or "*" not in text:
        return
    import yaml

    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return  # not (single-document) YAML: the loaders report it with its line
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise InvalidInput(f"{field}: a YAML alias refers to the node that contains it (a recursive alias)")
        active.add(key)
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else [])
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_YAML_NODES:
                raise InvalidInput(f"{field}: YAML aliases expand to more than {MAX_YAML_NODES} nodes")
        active.discard(key)
        sizes[key] = total
        return total

    try:
        if root is not None:
            size(root)
    except RecursionError:
        raise InvalidInput(f"{field}: YAML nested too deeply") from None


def _definition(app: web.Application, item: dict[str, Any], where: str = "") -> tuple[Definition, tuple[str, int] | None]:
    """A Definition from ``definition`` (a document), ``document`` (raw files) or ``environment``."""
    try:
        return _definition_of(app, item, where)
    except RecursionError:  # deeply nested JSON/YAML inside a file or the definition: bad input
        raise InvalidInput(f"{where}definition is nested too deeply") from None


def _definition_of(app: web.Application, item: dict[str, Any], where: str) -> tuple[Definition, tuple[str, int] | None]:
    if "document" in item and "definition" not in item:
        return _load_files(item["document"], where), None
    if "definition" in item:
        body = item["definition"]
        if not isinstance(body, dict):
            raise InvalidInput(f"{where}definition must be a JSON object (envcache's definition format)")
        try:
            return spec.definition_from_dict(body, source=f"<api>{'/' + where.rstrip(': ') if where else ''}"), None
        except EnvcacheError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:  # belt and braces: bad input is a 400
            raise InvalidInput(f"{where}invalid definition: {exc}") from None
    if "environment" in item:
        ref = item["environment"]
        if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
            raise InvalidInput(f"{where}environment must be an object with a 'name' (and optional 'version')")
        version = _version(ref.get("version"), f"{where}environment.version")
        envs = app[ENVIRONMENTS]
        record = envs.get(ref["name"], version)
        return record.as_definition(), (record.name, record.version)
    raise InvalidInput(f"{where}give either 'definition' (a definition document), 'document' (its raw files) "
                       "or 'environment' ({name, version})")


_MAX_INT = 2**63 - 1  # SQLite's INTEGER: a larger number cannot even be looked up


def _version(value: Any, field: str) -> int | None:
    """A positive integer from JSON or a query string; ASCII digits only (``"²".isdigit()`` is True)."""
    if value is None:
        return None
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,19}", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_INT:
        raise InvalidInput(f"{field} must be a positive integer (at most {_MAX_INT})")
    return value


def _variant(value: Any, field: str = "variant") -> str:
    value = "auto" if value is None else value
    if value not in _VARIANTS:
        raise InvalidInput(f"{field} must be one of cpu, gpu, auto (got {str(value)[:40]!r})")
    return resolve_auto_variant() if value == "auto" else value


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false")
    return value


# ---- handlers -------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    ensurer = request.app[ENSURER]
    upstream = request.app[upstream_wiring.UPSTREAM].status()
    return web.json_response({
        "status": "ok", "version": __version__, "queue_depth": ensurer.queue_depth(),
        "builds_running": ensurer.running(), "recipe_version": ensurer.recipe_version,
        # Counts only (health is public): details are in `envcache upstream list`.
        "upstream": {"configured": len(upstream["upstreams"]), "pulls": upstream["counters"],
                     "pushes": upstream["pushes"]["counts"], "recent_errors": len(upstream["last_errors"])},
    })


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(__version__))


async def resolve(request: web.Request) -> web.Response:
    data, definition, _ = await _subject(request)
    variant = _variant(data.get("variant"))
    ensurer = request.app[ENSURER]
    prepared = await ensurer.prepare(definition, variant)
    image = ensurer.lookup(prepared)
    counters = request.app[metrics_mod.METRICS_KEY]
    if image is None:
        counters.misses.labels(variant).inc()
        return _error(404, f"no cached image for this definition ({variant})", status="miss", key=prepared.key,
                      variant=variant, spec_hash=prepared.spec_hash)
    counters.hits.labels(variant).inc()
    return web.json_response({"status": "hit", "image": image.to_json(request.host)})


async def _start(request: web.Request, subject: tuple[Definition, tuple[str, int] | None], variant: str,
                 refresh: bool) -> Outcome:
    definition, environment = subject
    outcome = await request.app[ENSURER].ensure(definition, variant, refresh=refresh, environment=environment)
    counters = request.app[metrics_mod.METRICS_KEY]
    (counters.hits if outcome.image is not None else counters.misses).labels(variant).inc()
    return outcome


async def ensure(request: web.Request) -> web.Response:
    data, definition, environment = await _subject(request)
    variant = _variant(data.get("variant"))
    outcome = await _start(request, (definition, environment), variant, _flag(data, "refresh"))
    host = request.host
    if outcome.image is not None:
        return web.json_response({"status": "hit", "image": outcome.image.to_json(host)})
    build = outcome.build
    assert build is not None
    if not _flag(data, "wait"):
        return web.json_response({"status": "building", "build": build.to_json(host)}, status=202)
    # Shielded: this client hanging up must not cancel a build others (and the cache) want.
    with contextlib.suppress(BuildError):
        await asyncio.shield(build.wait())
    if build.state != "succeeded":
        return _error(422, f"build {build.id} failed: {build.error}", status="failed", build=build.to_json(host))
    return web.json_response({"status": build.outcome, "image": build.image.to_json(host), "build": build.to_json(host)})


async def build_state(request: web.Request) -> web.Response:
    build = request.app[ENSURER].get_build(request.match_info["id"])
    return web.json_response(build.to_json(request.host))


async def build_log(request: web.Request) -> web.StreamResponse:
    """The build log as plain text, streamed line by line while the build runs."""
    build = request.app[ENSURER].get_build(request.match_info["id"])
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


async def build_environment(request: web.Request) -> web.Response:
    build: Build = request.app[ENSURER].get_build(request.match_info["id"])
    if not build.env_name:
        raise NotFound(f"build {build.id} was not started from a registered environment")
    record = request.app[ENVIRONMENTS].get(build.env_name, build.env_version)
    return web.json_response(record.to_json())


async def images(request: web.Request) -> web.Response:
    limit = _version(request.query.get("limit", "1000"), "limit") or 1000
    host = request.host
    return web.json_response({"images": [image.to_json(host) for image in request.app[ENSURER].images(limit)]})


async def image_details(request: web.Request) -> web.Response:
    """Azure's ``get_image_details``: one image by key (or by ``<key>-<variant>`` tag)."""
    key = request.match_info["key"].split("-")[0]
    return web.json_response(request.app[ENSURER].image(key).to_json(request.host))


async def register_environment(request: web.Request) -> web.Response:
    data = await _body(request)
    name = check_name(data.get("name"))
    source = "document" if "document" in data and "definition" not in data else "definition"
    definition, _ = _definition(request.app, {source: data.get(source)})
    record, created = request.app[ENVIRONMENTS].register(name, definition)
    return web.json_response({"environment": record.to_json(), "created": created}, status=201 if created else 200)


async def list_environments(request: web.Request) -> web.Response:
    return web.json_response({"environments": [r.to_json() for r in request.app[ENVIRONMENTS].list()]})


async def get_environment(request: web.Request) -> web.Response:
    version = _version(request.query.get("version"), "version")
    return web.json_response(request.app[ENVIRONMENTS].get(request.match_info["name"], version).to_json())


async def environment_versions(request: web.Request) -> web.Response:
    records = request.app[ENVIRONMENTS].versions(request.match_info["name"])
    return web.json_response({"versions": [r.to_json() for r in records]})


async def download_environment(request: web.Request) -> web.Response:
    """The version as an Azure ML scaffold (``azureml_environment.json`` …), files as JSON."""
    version = _version(request.query.get("version"), "version")
    record = request.app[ENVIRONMENTS].get(request.match_info["name"], version)
    definition = record.as_definition()
    definition.name, definition.version = record.name, str(record.version)
    with tempfile.TemporaryDirectory(prefix="envcache-scaffold-") as tmp:
        spec.write_azure_dir(definition, Path(tmp))
        files = {p.relative_to(tmp).as_posix(): p.read_text(encoding="utf-8")
                 for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
    return web.json_response({"name": record.name, "version": record.version, "files": files})


async def warm(request: web.Request) -> web.Response:
    """Ensure many definitions (optionally both variants) with bounded concurrency; per-item outcome."""
    data = await _body(request)
    items = data.get("items")
    if not isinstance(items, list) or not items:
        raise InvalidInput("items must be a non-empty list of {definition | environment, label?}")
    if len(items) > MAX_WARM_ITEMS:
        raise InvalidInput(f"items: at most {MAX_WARM_ITEMS} per request")
    variants = data.get("variants", ["auto"])
    if not isinstance(variants, list) or not variants:
        raise InvalidInput("variants must be a non-empty list of cpu, gpu, auto")
    variants = list(dict.fromkeys(_variant(v, "variants[]") for v in variants))
    concurrency = data.get("concurrency", 4)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 64:
        raise InvalidInput("concurrency must be an integer from 1 to 64")
    refresh = _flag(data, "refresh")
    # Parse everything first (once; every variant shares it): a typo in item 40 should fail the
    # request, not half a warm-up.
    parsed = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"items[{index}] must be an object")
        label = item.get("label", f"items[{index}]")
        parsed.append((str(label), _definition(request.app, item, f"items[{index}]: ")))
    gate = asyncio.Semaphore(concurrency)

    async def one(label: str, subject: tuple[Definition, tuple[str, int] | None], variant: str) -> dict[str, Any]:
        async with gate:
            began = time.monotonic()
            result: dict[str, Any] = {"label": label, "variant": variant}
            try:
                outcome = await _start(request, subject, variant, refresh)
                if outcome.image is not None:
                    result.update(outcome="hit", image=outcome.image.to_json(request.host))
                else:
                    build = outcome.build
                    assert build is not None
                    result["build"] = build.id
                    image = await asyncio.shield(build.wait())
                    result.update(outcome=build.outcome or "built", image=image.to_json(request.host))
            except EnvcacheError as exc:
                result.update(outcome="failed", error=exc.message)
            result["seconds"] = round(time.monotonic() - began, 3)
            return result

    results = await asyncio.gather(*(one(label, subject, v) for label, subject in parsed for v in variants))
    summary = dict(Counter(result["outcome"] for result in results))
    return web.json_response({"results": results, "summary": summary, "ok": "failed" not in summary})


# ---- wiring ---------------------------------------------------------------------------------


FLUSHER = web.AppKey("envcache_flusher", asyncio.Task)


async def _start_flusher(app: web.Application) -> None:
    """Write batched last-used times now and then (not per hit: the hit path stays read-only)."""
    ensurer = app[ENSURER]

    async def flusher() -> None:
        while True:
            await asyncio.sleep(10)
            ensurer.flush_last_used()

    app[FLUSHER] = asyncio.create_task(flusher())


async def _shutdown(app: web.Application) -> None:
    """Stop builds and flush — on shutdown, i.e. before any cleanup closes the store."""
    task = app.get(FLUSHER)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await app[ENSURER].close()


def setup(app: web.Application) -> None:
    """Add the JSON API, /metrics and the ensure machinery to the daemon's app."""
    store, config = app["store"], app["config"]
    metrics = metrics_mod.setup(app)
    engine = app[ENGINE] = EngineHandle(config)
    # Upstream registries: pulled from on a miss (a source), pushed to after a build (the hook),
    # and base images fetched through them (a resolver, before the plain remote lookup).
    upstream = upstream_wiring.setup(app, engine.get)
    resolvers = make_resolvers(app)
    resolvers.insert(2, app[upstream_wiring.BASE_PULLER])
    resolver = BaseDigestResolver(store.db, resolvers, float(config.resolve.base_digest_ttl))

    def on_build_done(build: Build, seconds: float) -> None:
        metrics.builds.labels(build.outcome if build.state == "succeeded" else "failed").inc()
        metrics.build_seconds.observe(seconds)
        upstream.on_build_done(build, seconds)

    ensurer = Ensurer(
        db=store.db, resolver=resolver, builder=make_builder(app), recipe_version=recipe_version(),
        variant_bases={name: v.base_image for name, v in config.variants.items()},
        concurrency=config.build.concurrency, sources=upstream.as_sources(), on_build_done=on_build_done,
        set_tag=store.set_tag,
        has_manifest=lambda repo, tag: store.get_manifest(repo, tag, with_body=False) is not None,
    )
    app[ENSURER] = ensurer
    app[ENVIRONMENTS] = Environments(store.db)
    app[MEMO] = _DefinitionMemo()
    metrics.bind_queue(ensurer.queue_depth, ensurer.running)
    app.middlewares.append(json_errors)
    app.on_startup.append(_start_flusher)
    app.on_shutdown.append(_shutdown)
    r = app.router
    r.add_get("/api/v1/health", health)
    r.add_get("/api/v1/openapi.json", openapi)
    r.add_post("/api/v1/resolve", resolve)
    r.add_post("/api/v1/ensure", ensure)
    r.add_get("/api/v1/builds/{id}", build_state)
    r.add_get("/api/v1/builds/{id}/log", build_log)
    r.add_get("/api/v1/builds/{id}/environment", build_environment)
    r.add_get("/api/v1/images", images)
    r.add_get("/api/v1/images/{key}", image_details)
    r.add_post("/api/v1/environments", register_environment)
    r.add_get("/api/v1/environments", list_environments)
    r.add_get("/api/v1/environments/{name}", get_environment)
    r.add_get("/api/v1/environments/{name}/versions", environment_versions)
    r.add_get("/api/v1/environments/{name}/download", download_environment)
    r.add_post("/api/v1/warm", warm)
    r.add_post("/api/v1/gc", gc_handler)
