"""The JSON API's contract, stated once: request and response models (msgspec Structs) that
validate what clients send, shape what the daemon answers, and generate ``/api/v1/openapi.json``.

WHY msgspec: it validates and converts in C, and the same types give the JSON Schema, so the
OpenAPI document cannot drift from what the handlers accept. Its own error texts are precise but
terse (``Expected `int` >= 1 - at `$.environment.version```); each request model carries the
sentences users have always been shown (``MESSAGES``), and :func:`convert` answers with those,
naming the field. The models are imported by the daemon only (never by the CLI's hit path).
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from envcache.definition.variants import CHOICES
from envcache.errors import InvalidInput
from envcache.wire import DOCUMENT_SCHEMA

MAX_INTEGER = 2**63 - 1  # SQLite's INTEGER: a larger number cannot even be looked up
MAX_WARM_ITEMS = 1000
_CHOICES = ", ".join(CHOICES)

Variant = Literal[CHOICES]  # type: ignore[valid-type]  # cpu, gpu, auto
PositiveInt = Annotated[int, msgspec.Meta(ge=1, le=MAX_INTEGER)]
# A version may come as its digits (clients pass Azure's string versions through); the one place
# that uses it turns them into a PositiveInt (requests.positive_int), with the same sentence.
# A full match that Python (msgspec validates with re.search) and JSON Schema (ECMA-262) read
# alike: Python's ``$`` also matches before a final newline, "not followed by anything" does not.
VersionDigits = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,19}(?![\s\S])")]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
UNSET = msgspec.UNSET
Unset = msgspec.UnsetType

_VERSION = "{field} must be a positive integer (at most %d)" % MAX_INTEGER
_FLAG = "{field} must be true or false"
_VARIANT = "{field} must be one of %s (got {got})" % _CHOICES


class Request(msgspec.Struct):
    """A request body; ``MESSAGES`` maps a field path (``environment.version``, ``items[]``)
    to the sentence shown when it is wrong. ``{field}``, ``{got}`` and ``{index}`` are filled in."""

    MESSAGES: ClassVar[dict[str, str]] = {}


class EnvironmentRef(Request):
    """A registered or curated environment; the latest version when ``version`` is absent."""

    name: str
    version: PositiveInt | VersionDigits | None = None


class Subject(Request):
    """What to look up: exactly one of ``definition``, ``document`` or ``environment``."""

    definition: Annotated[dict[str, Any], msgspec.Meta(
        description="envcache's definition document (README, 'The definition format')")] | Unset = UNSET
    document: Annotated[Any, msgspec.Meta(extra_json_schema=DOCUMENT_SCHEMA)] = UNSET
    environment: EnvironmentRef | Unset = UNSET

    MESSAGES: ClassVar[dict[str, str]] = {
        "definition": "definition must be a JSON object (envcache's definition format)",
        "environment": "environment must be an object with a 'name' (and optional 'version')",
        "environment.name": "environment must be an object with a 'name' (and optional 'version')",
        "environment.version": _VERSION,
    }


Sha256Hex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0, le=MAX_INTEGER)]
PipelineName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class TreeListing(Request):
    """A directory (or one file) as the client hashed it: (path, mode, size, sha256 hex) per file.
    Every file's bytes must already be a blob in the daemon (upload them to ``envcache/step-files``)."""

    kind: Literal["dir", "file"]
    files: list[tuple[str, Literal["100644", "100755"], NonNegativeInt, Sha256Hex]]


class PipelineInput(Request):
    """Exactly one of: an earlier step's ``output`` (by name), or a file/directory ``tree``."""

    output: str | Unset = UNSET
    tree: TreeListing | Unset = UNSET


class PipelineStep(Request):
    name: PipelineName
    script_name: PipelineName
    snapshot: TreeListing
    environment: Subject
    arguments: list[str] = msgspec.field(default_factory=list)
    inputs: dict[str, PipelineInput] = msgspec.field(default_factory=dict)
    outputs: list[str] = msgspec.field(default_factory=list)
    variant: Variant | None = None
    allow_reuse: bool = True
    version: str | None = None

    MESSAGES: ClassVar[dict[str, str]] = {"variant": _VARIANT, "allow_reuse": _FLAG}


class PipelineRunRequest(Request):
    """A frozen pipeline (the CLI's ``envcache pipeline run`` sends one); steps in data-flow order."""

    steps: Annotated[list[PipelineStep], msgspec.Meta(min_length=1, max_length=500)]
    description: str | None = None
    regenerate_outputs: bool = False
    continue_on_step_failure: bool = False
    max_parallel: Annotated[int, msgspec.Meta(ge=1, le=16)] = 2

    MESSAGES: ClassVar[dict[str, str]] = {
        "steps": "steps must be a non-empty list of steps (at most 500)",
        "regenerate_outputs": _FLAG, "continue_on_step_failure": _FLAG,
        "max_parallel": "max_parallel must be an integer from 1 to 16",
    }


class ResolveRequest(Subject):
    variant: Variant | None = None

    MESSAGES: ClassVar[dict[str, str]] = {**Subject.MESSAGES, "variant": _VARIANT}


class EnsureRequest(ResolveRequest):
    refresh: bool = False
    wait: Annotated[bool, msgspec.Meta(description="answer only when the build is done")] = False

    MESSAGES: ClassVar[dict[str, str]] = {**ResolveRequest.MESSAGES, "refresh": _FLAG, "wait": _FLAG}


class WarmItem(Subject):
    label: Any = UNSET


class WarmRequest(Request):
    items: Annotated[list[WarmItem], msgspec.Meta(min_length=1, max_length=MAX_WARM_ITEMS)]
    variants: Annotated[list[Variant], msgspec.Meta(min_length=1)] = msgspec.field(default_factory=lambda: ["auto"])
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    refresh: bool = False

    MESSAGES: ClassVar[dict[str, str]] = {
        "items": "items must be a non-empty list of {{definition | environment, label?}}",
        "items:max": f"items: at most {MAX_WARM_ITEMS} per request",
        "items[]": "items[{index}] must be an object",
        "variants": f"variants must be a non-empty list of {_CHOICES}",
        "variants[]": f"variants[] must be one of {_CHOICES} (got {{got}})",
        "concurrency": "concurrency must be an integer from 1 to 64",
        "refresh": _FLAG,
    }


class RegisterRequest(Request):
    name: Any = UNSET  # checked by the environments' own name rule
    definition: dict[str, Any] | Unset = UNSET
    document: Annotated[Any, msgspec.Meta(extra_json_schema=DOCUMENT_SCHEMA)] = UNSET

    MESSAGES: ClassVar[dict[str, str]] = {"definition": Subject.MESSAGES["definition"]}


class GcRequest(Request, forbid_unknown_fields=True):
    dry_run: bool = False
    keep_days: NonNegative | None = None
    grace_seconds: NonNegative | None = None
    max_bytes: Annotated[int, msgspec.Meta(ge=0)] | None = None  # null: the daemon's [gc] max_bytes

    MESSAGES: ClassVar[dict[str, str]] = {
        "unknown": "unknown field(s) {unknown}; valid fields: dry_run (boolean), keep_days (number of days or "
                   "null), grace_seconds (number of seconds), max_bytes (bytes or null)",
        "dry_run": "dry_run: must be true or false",
        "keep_days": "keep_days: must be a number >= 0, not {value}",
        "grace_seconds": "grace_seconds: must be a number >= 0, not {value}",
        "max_bytes": "max_bytes: must be an integer number of bytes >= 0, not {value}",
    }


# -- responses ----------------------------------------------------------------------------------------


class Image(msgspec.Struct):
    key: str
    variant: str
    spec_hash: str
    image: Annotated[str, msgspec.Meta(description="a pullable reference: <daemon host>/<repository>:<tag>")]
    repository: str
    tag: str
    digest: str
    size: int
    created: float
    last_used: float
    lock: dict[str, Any]
    base_digest: str
    recipe_version: str
    compression: Annotated[str, msgspec.Meta(description="of its layers: gzip, zstd or none")] = ""
    pinned: Annotated[bool, msgspec.Meta(description="gc never expires or evicts a pinned image")] = False


class BuildEnvironment(msgspec.Struct):
    name: str
    version: int | None


class Build(msgspec.Struct):
    id: str
    key: str
    variant: str
    spec_hash: str
    environment: BuildEnvironment | None
    state: Literal["queued", "running", "succeeded", "failed"]
    outcome: Literal["built", "pulled", "unchanged", "recompressed"] | None
    refresh: bool
    created: float
    started: float | None
    finished: float | None
    error: str | None
    image: Image | None
    changes: Annotated[list[str] | None, msgspec.Meta(
        description="what a refresh changed ('requests 2.32.2 → 2.32.3'); empty when nothing did")] = None
    request_id: Annotated[str | None, msgspec.Meta(
        description="X-Request-Id of the request that started the build (while the daemon remembers it)")] = None


class Environment(msgspec.Struct):
    name: str
    version: int
    spec_hash: str
    definition: dict[str, Any]
    created: float
    curated: bool


class ErrorBody(msgspec.Struct):
    status: int
    message: str


class Error(msgspec.Struct):
    error: ErrorBody


class Hit(msgspec.Struct):
    status: Literal["hit"]
    image: Image


class Miss(msgspec.Struct):
    error: ErrorBody
    status: Literal["miss"]
    key: str
    variant: str
    spec_hash: str


class Ensured(msgspec.Struct):
    status: Literal["hit", "built", "pulled", "unchanged", "recompressed"]
    image: Image
    build: Build | Unset = UNSET


class Building(msgspec.Struct):
    status: Literal["building"]
    build: Build


class Failed(msgspec.Struct):
    error: ErrorBody
    status: Literal["failed"]
    build: Build


class Images(msgspec.Struct):
    images: list[Image]


class ReplacedImage(msgspec.Struct):
    """An image the key named before a refresh re-resolved it; pullable by digest until gc expires it."""

    image: Annotated[str, msgspec.Meta(description="a pullable reference by digest: <host>/<repository>@<digest>")]
    repository: str
    tag: str
    digest: str
    size: int
    created: float
    replaced: float
    lock: dict[str, Any]


class ImageHistory(msgspec.Struct):
    key: str
    current: Image
    replaced: list[ReplacedImage]


class Environments(msgspec.Struct):
    environments: list[Environment]


class Versions(msgspec.Struct):
    versions: list[Environment]


class Registered(msgspec.Struct):
    environment: Environment
    created: bool


class Scaffold(msgspec.Struct):
    name: str
    version: int
    files: Annotated[dict[str, str], msgspec.Meta(description="relative path → text of the Azure ML files")]


class Wheel(msgspec.Struct):
    digest: str
    filename: str
    name: Annotated[str, msgspec.Meta(description="the project, PEP 503 normalised")]
    version: str
    tags: list[str]
    requires_python: str | None
    summary: str | None
    size: int
    created: float
    url: Annotated[str, msgspec.Meta(description="where this daemon serves the file, as the caller reached it")]
    requirement: Annotated[str, msgspec.Meta(
        description="what to put in a definition's pip_packages: name @ url#sha256=…")]


class WheelAdded(msgspec.Struct):
    wheel: Wheel
    created: bool


class WheelList(msgspec.Struct):
    wheels: list[Wheel]


class WheelUsers(msgspec.Struct):
    environments: Annotated[list[str], msgspec.Meta(
        description="registered environments whose latest version pins the wheel (name:version)")]
    older_versions: list[str]
    images: Annotated[list[str], msgspec.Meta(description="keys of cached images that pin it")]


class WheelDetails(msgspec.Struct):
    wheel: Wheel
    used_by: WheelUsers


class WheelRemoved(msgspec.Struct):
    wheel: Wheel
    used_by: WheelUsers
    artifact_kept: Annotated[bool, msgspec.Meta(
        description="its envcache/wheel artifact stays while an older environment version or an image pins it")]


class WarmResult(msgspec.Struct):
    label: str
    variant: str
    outcome: Literal["hit", "pulled", "built", "unchanged", "failed"]
    seconds: float
    image: Image | Unset = UNSET
    build: str | Unset = UNSET
    error: str | Unset = UNSET


class Warmed(msgspec.Struct):
    results: list[WarmResult]
    summary: dict[str, int]
    ok: bool


class EngineHealth(msgspec.Struct):
    """The build engine as the daemon finds it now (detected again when a build needs one)."""

    name: Annotated[str, msgspec.Meta(description="docker, buildah, or none")]
    answers: bool
    version: str | None = None
    detail: Annotated[str | None, msgspec.Meta(description="what is wrong and what to do")] = None
    summary: Annotated[str, msgspec.Meta(description="the line `envcache status` and the serve banner print")] = ""


class Health(msgspec.Struct):
    status: Literal["ok"]
    version: str
    queue_depth: int
    builds_running: int
    recipe_version: str
    upstream: dict[str, Any]
    engine: EngineHealth


class StepReport(msgspec.Struct):
    name: str
    status: Literal["reused", "ran", "failed", "skipped"]
    seconds: float
    key: str | None
    outputs: Annotated[dict[str, str], msgspec.Meta(description="output name → tree digest")]
    error: str | None
    log_tail: str


class PipelineReport(msgspec.Struct):
    ok: bool
    seconds: float
    steps: list[StepReport]


class PipelineRun(msgspec.Struct):
    id: str
    state: Literal["running", "succeeded", "failed"]
    created: float
    finished: float | None
    error: str | None
    report: PipelineReport | None


class StepOutput(msgspec.Struct):
    tree: str
    blob: Annotated[str, msgspec.Meta(description="the output's tar layer in envcache/step")]


class StepDetails(msgspec.Struct):
    key: str
    step: str
    image: Annotated[str, msgspec.Meta(description="the artifact: HOST/envcache/step:KEY")]
    digest: str
    created: float
    last_used: float
    outputs: dict[str, StepOutput]
    record: Annotated[dict[str, Any], msgspec.Meta(description="the step record (the artifact's config)")]
    snapshot: Annotated[list[Any], msgspec.Meta(description="[path, mode, size, sha256] per file")]
    log: str


# -- turning requests into models ----------------------------------------------------------------------

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]")


def convert(data: Any, model: type[Request], where: str = "") -> Any:
    """``data`` (decoded JSON) as ``model``; InvalidInput with the model's sentence otherwise."""
    if model.__struct_config__.forbid_unknown_fields and isinstance(data, dict):
        unknown = sorted(set(data) - set(model.__struct_fields__))
        if unknown:  # named first, before any value is judged: a typo is the likelier mistake
            raise InvalidInput(where + model.MESSAGES["unknown"].format(unknown=unknown))
    try:
        return msgspec.convert(data, model, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidInput(where + explain(model, data, str(exc))) from None


def explain(model: type[Request], data: Any, error: str) -> str:
    """The user's sentence for a msgspec ValidationError ``error`` on ``data``."""
    match = _AT.search(error)
    steps = [(name or None, int(index) if index else None) for name, index in _STEP.findall(match["path"])] \
        if match else []
    return _explain(model, data, steps, error)


def _explain(model: type[Request], data: Any, steps: list[tuple[str | None, int | None]], error: str) -> str:
    path = ""
    value: Any = data
    for position, (name, index) in enumerate(steps):
        if name is not None:
            path = f"{path}.{name}" if path else name
            value = value.get(name) if isinstance(value, dict) else None
            continue
        value = value[index] if isinstance(value, list) and index < len(value) else None
        element = _element_model(model, path)
        if element is not None and position + 1 < len(steps):
            # Inside a list of objects: the element's own sentence, prefixed with where it is.
            return f"{path}[{index}]: " + _explain(element, value, steps[position + 1:], error)
        path += "[]"
        return _sentence(model, path, value, error, index=index)
    if error.startswith("Object contains unknown field"):
        unknown = sorted(set(value) - set(model.__struct_fields__)) if isinstance(value, dict) else []
        return model.MESSAGES.get("unknown", "{error}").format(unknown=unknown, error=error)
    return _sentence(model, path, value, error)


def _sentence(model: type[Request], path: str, value: Any, error: str, index: int | None = None) -> str:
    key = path or "body"
    if "length <=" in error and f"{key}:max" in model.MESSAGES:
        key = f"{key}:max"
    template = model.MESSAGES.get(key)
    if template is None:
        return f"{path or 'request body'}: {_AT.sub('', error)}"
    return template.format(field=path.removesuffix("[]"), got=repr(str(value)[:40]), value=repr(value),
                           index=index)


def _element_model(model: type[Request], field: str) -> type[Request] | None:
    """The Struct a list field holds (``items`` → WarmItem), if any."""
    hint = typing.get_type_hints(model).get(field.split(".")[-1])
    for arg in typing.get_args(hint) or ():
        if isinstance(arg, type) and issubclass(arg, Request):
            return arg
        for inner in typing.get_args(arg):
            if isinstance(inner, type) and issubclass(inner, Request):
                return inner
    return None


# -- the OpenAPI document ----------------------------------------------------------------------------

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(model: Any, description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": model}}}


def openapi_document(version: str, routes: list[tuple[str, str, str, dict[str, Any]]]) -> dict[str, Any]:
    """OpenAPI 3.1 for ``routes``: (method, path, summary, {"body": Model or a media type (raw
    bytes), "responses": {status: Model or description}, "params": [...]}), with every model's
    JSON Schema from msgspec."""
    models: list[Any] = [Error]
    for _method, _path, _summary, spec in routes:
        models += [spec[k] for k in ("body",) if k in spec and not isinstance(spec[k], str)]
        models += [m for m in spec.get("responses", {}).values() if not isinstance(m, str)]
    refs, components = msgspec.json.schema_components(models, ref_template="#/components/schemas/{name}")
    ref_of = dict(zip(map(id, models), refs))
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, spec in routes:
        operation: dict[str, Any] = {"summary": summary, "responses": {"4XX": _ERROR}}
        for status, model in spec.get("responses", {}).items():
            operation["responses"][status] = (
                {"description": model, "content": {"text/plain": {"schema": {"type": "string"}}}}
                if isinstance(model, str) else _json(ref_of[id(model)]))
        if isinstance(spec.get("body"), str):
            operation["requestBody"] = {"required": True, "content": {spec["body"]: {
                "schema": {"type": "string", "format": "binary"}}}}
        elif "body" in spec:
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": ref_of[id(spec["body"])]}}}
        if spec.get("params"):
            operation["parameters"] = spec["params"]
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "envcache daemon API", "version": version,
                 "description": "Environment image cache. The OCI registry is under /v2/, metrics at /metrics."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
        "security": [{"token": []}],
    }


def path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def query_param(name: str, kind: str = "integer", required: bool = False) -> dict[str, Any]:
    schema = {"type": "integer", "minimum": 1, "maximum": MAX_INTEGER} if kind == "integer" else {"type": kind}
    return {"name": name, "in": "query", "required": required, "schema": schema}
