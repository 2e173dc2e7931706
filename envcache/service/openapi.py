"""The OpenAPI 3.1 document of ``/api/v1/`` (served at ``/api/v1/openapi.json``).

Written as data next to the routes rather than generated, so it says what callers may rely on
(the test suite checks that every route is documented and every documented path is routed).
"""

from __future__ import annotations

from typing import Any

_REF = {"$ref": "#/components/schemas/DefinitionOrEnvironment"}
_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, responses: dict[str, Any], body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, "4XX": _ERR}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_POSITIVE = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}  # what SQLite's INTEGER holds


def _query(name: str, kind: str = "integer") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": _POSITIVE if kind == "integer" else {"type": kind}}


_OBJ = {"type": "object"}
IMAGE = {"$ref": "#/components/schemas/Image"}
BUILD = {"$ref": "#/components/schemas/Build"}
ENV = {"$ref": "#/components/schemas/Environment"}


def openapi_document(version: str) -> dict[str, Any]:
    variant = {"type": "string", "enum": ["cpu", "gpu", "auto"], "default": "auto"}
    ensure_body = {"allOf": [_REF, {"type": "object", "properties": {
        "variant": variant, "refresh": {"type": "boolean"},
        "wait": {"type": "boolean", "description": "answer only when the build is done"}}}]}
    paths = {
        "/api/v1/health": {"get": _op("Liveness, version, build queue", {"200": _json(_OBJ)})},
        "/api/v1/openapi.json": {"get": _op("This document", {"200": _json(_OBJ)})},
        "/api/v1/resolve": {"post": _op(
            "Lookup only: the cached image for a definition, or 404 (status=miss)",
            {"200": _json({"type": "object", "properties": {"status": {"const": "hit"}, "image": IMAGE}}),
             "404": _ERR},
            {"allOf": [_REF, {"type": "object", "properties": {"variant": variant}}]})},
        "/api/v1/ensure": {"post": _op(
            "Hit → the image; miss → pull or build (single-flight), answering a build to follow",
            {"200": _json({"type": "object", "properties": {"status": {"enum": ["hit", "built", "pulled", "unchanged"]},
                                                            "image": IMAGE, "build": BUILD}}),
             "202": _json({"type": "object", "properties": {"status": {"const": "building"}, "build": BUILD}}),
             "422": _ERR},
            ensure_body)},
        "/api/v1/builds/{id}": {"get": _op("State of a build", {"200": _json(BUILD)}, params=[_path_param("id")])},
        "/api/v1/builds/{id}/log": {"get": _op(
            "The build log, text/plain, streamed until the build ends (follow=false: what there is now)",
            {"200": {"description": "log lines", "content": {"text/plain": {"schema": {"type": "string"}}}}},
            params=[_path_param("id"), _query("follow", "boolean")])},
        "/api/v1/builds/{id}/environment": {"get": _op(
            "The registered environment version a build was started from", {"200": _json(ENV)},
            params=[_path_param("id")])},
        "/api/v1/images": {"get": _op("Cached images, most recently used first",
                                      {"200": _json({"type": "object", "properties": {"images": {"type": "array", "items": IMAGE}}})},
                                      params=[_query("limit")])},
        "/api/v1/images/{key}": {"get": _op("Details of one image (Azure's get_image_details)", {"200": _json(IMAGE)},
                                            params=[_path_param("key")])},
        "/api/v1/environments": {
            "get": _op("Latest version of every environment, curated ones first",
                       {"200": _json({"type": "object", "properties": {"environments": {"type": "array", "items": ENV}}})}),
            "post": _op("Register: a new version only when the content hash changes; envcache- names are reserved",
                        {"201": _json({"type": "object", "properties": {"environment": ENV, "created": {"type": "boolean"}}}),
                         "200": _json({"type": "object", "properties": {"environment": ENV, "created": {"type": "boolean"}}})},
                        {"type": "object", "required": ["name", "definition"],
                         "properties": {"name": {"type": "string"}, "definition": _OBJ}}),
        },
        "/api/v1/environments/{name}": {"get": _op("One version (latest by default)", {"200": _json(ENV)},
                                                   params=[_path_param("name"), _query("version")])},
        "/api/v1/environments/{name}/versions": {"get": _op(
            "Every version", {"200": _json({"type": "object", "properties": {"versions": {"type": "array", "items": ENV}}})},
            params=[_path_param("name")])},
        "/api/v1/environments/{name}/download": {"get": _op(
            "The version as an Azure ML scaffold: {files: {path: text}}", {"200": _json(_OBJ)},
            params=[_path_param("name"), _query("version")])},
        "/api/v1/warm": {"post": _op(
            "Ensure many definitions with bounded concurrency; per-item outcome hit/pulled/built/failed + seconds",
            {"200": _json({"type": "object", "properties": {"results": {"type": "array", "items": _OBJ},
                                                            "summary": _OBJ, "ok": {"type": "boolean"}}})},
            {"type": "object", "required": ["items"], "properties": {
                "items": {"type": "array", "items": {"allOf": [_REF, {"type": "object", "properties": {"label": {"type": "string"}}}]}},
                "variants": {"type": "array", "items": variant}, "concurrency": {"type": "integer", "minimum": 1, "maximum": 64},
                "refresh": {"type": "boolean"}}})},
        "/api/v1/gc": {"post": _op(
            "Mark and sweep the store: untagged manifests, unreferenced blobs, idle uploads (write scope)",
            {"200": _json(_OBJ), "409": _ERR},
            {"type": "object", "properties": {
                "dry_run": {"type": "boolean"}, "keep_days": {"type": ["number", "null"], "minimum": 0},
                "grace_seconds": {"type": "number", "minimum": 0}}})},
    }
    schemas = {
        "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
            "status": {"type": "integer"}, "message": {"type": "string"}}}}},
        "DefinitionOrEnvironment": {"type": "object", "description": (
            "one of 'definition' (envcache's definition document, see README), 'document' (a "
            "definition's raw files in any input format, loaded by the daemon) or 'environment' "
            "({name, version?}) naming a registered or curated environment"),
            "properties": {
                "definition": _OBJ,
                "document": {"type": "object", "required": ["path", "files"], "properties": {
                    "path": {"type": "string", "description": "relative file or Azure ML directory"},
                    "format": {"type": ["string", "null"], "description": "as --format; null detects it"},
                    "files": {"type": "object", "additionalProperties": {"type": "string"},
                              "description": "relative name → text; includes must stay inside"},
                    "display_root": {"type": "string", "description": "how error messages show the path"}}},
                "environment": {"type": "object", "properties": {
                    "name": {"type": "string"}, "version": _POSITIVE}}}},
        "Image": {"type": "object", "properties": {k: {"type": t} for k, t in {
            "key": "string", "variant": "string", "spec_hash": "string", "image": "string", "repository": "string",
            "tag": "string", "digest": "string", "size": "integer", "created": "number", "last_used": "number",
            "lock": "object", "base_digest": "string", "recipe_version": "string"}.items()}},
        "Build": {"type": "object", "properties": {
            "id": {"type": "string"}, "key": {"type": "string"}, "variant": {"type": "string"},
            "state": {"enum": ["queued", "running", "succeeded", "failed"]},
            "outcome": {"enum": ["built", "pulled", "unchanged", None]}, "error": {"type": ["string", "null"]},
            "environment": {"type": ["object", "null"]}, "image": {"oneOf": [IMAGE, {"type": "null"}]}}},
        "Environment": {"type": "object", "properties": {
            "name": {"type": "string"}, "version": {"type": "integer"}, "spec_hash": {"type": "string"},
            "definition": _OBJ, "created": {"type": "number"}, "curated": {"type": "boolean"}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "envcache daemon API", "version": version,
                 "description": "Environment image cache. The OCI registry is under /v2/, metrics at /metrics."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
        "security": [{"token": []}],
    }
