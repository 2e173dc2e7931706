"""Manifest endpoints, the referrers API, tag listing and the catalog."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import CIMultiDict

from envcache.registry.body import read_limited
from envcache.registry.errors import (
    API_VERSION_HEADER,
    RegistryError,
    digest_invalid,
    manifest_unknown,
    name_unknown,
)
from envcache.oci import (
    MAX_MANIFEST_SIZE, OCI_INDEX, DigestError, ManifestInvalid, TagInvalid, check_tag, parse_digest,
)
from envcache.store import DigestMismatch, ManifestBlobUnknown, Store


def _check_reference(reference: str, status: int) -> None:
    """A reference is a digest (``alg:hex``) or a tag; anything else is refused up front."""
    try:
        if ":" in reference:
            parse_digest(reference)
        else:
            check_tag(reference)
    except DigestError as exc:
        raise digest_invalid(str(exc)) from None
    except TagInvalid as exc:
        code = "MANIFEST_INVALID" if status == 400 else "MANIFEST_UNKNOWN"
        raise RegistryError(status, code, str(exc), {"reference": reference[:300]}) from None


async def get_manifest(request: web.Request, store: Store, name: str, reference: str) -> web.StreamResponse:
    _check_reference(reference, 404)
    head = request.method == "HEAD"
    manifest = await store.get_manifest(name, reference, with_body=not head)
    if manifest is None:
        raise manifest_unknown(reference)
    headers = {
        **API_VERSION_HEADER,
        "Docker-Content-Digest": manifest.digest,
        "ETag": f'"{manifest.digest}"',
        "Content-Type": manifest.media_type,
    }
    if head:
        headers["Content-Length"] = str(manifest.size)
        return web.Response(status=200, headers=headers)
    return web.Response(status=200, body=manifest.body, headers=headers)


async def put_manifest(request: web.Request, store: Store, name: str, reference: str) -> web.StreamResponse:
    """Store the body byte-for-byte; 413 beyond 4 MiB; ``?tag=`` adds tags (spec 1.1)."""
    _check_reference(reference, 400)
    extra_tags = request.query.getall("tag", [])
    for tag in extra_tags:
        _check_reference(tag, 400)
    media_type = request.headers.get("Content-Type", "").split(";")[0].strip()
    if not media_type:
        raise RegistryError(400, "MANIFEST_INVALID", "a Content-Type header naming the manifest media type is required")
    body = await read_limited(request, MAX_MANIFEST_SIZE, _too_large)
    try:
        digest = await store.put_manifest(name, reference, body, media_type, tags=extra_tags)
    except DigestMismatch as exc:
        raise digest_invalid(str(exc)) from None
    except ManifestBlobUnknown as exc:
        raise RegistryError(400, "MANIFEST_BLOB_UNKNOWN", "manifest references a blob unknown to registry",
                            {"digest": exc.digest}) from None
    except ManifestInvalid as exc:
        raise RegistryError(400, "MANIFEST_INVALID", str(exc)) from None
    headers = CIMultiDict({**API_VERSION_HEADER, "Location": f"/v2/{name}/manifests/{digest}",
                           "Docker-Content-Digest": digest})
    manifest = await store.get_manifest(name, digest, with_body=False)
    if manifest is not None and manifest.subject:
        headers["OCI-Subject"] = manifest.subject
    for tag in extra_tags:  # the spec: one OCI-Tag per tag accepted with ?tag=
        headers.add("OCI-Tag", tag)
    return web.Response(status=201, headers=headers)


def _too_large(size: int) -> RegistryError:
    return RegistryError(413, "SIZE_INVALID", f"manifest of {size} bytes exceeds the {MAX_MANIFEST_SIZE}-byte limit",
                         {"limit": MAX_MANIFEST_SIZE})


async def delete_manifest(request: web.Request, store: Store, name: str, reference: str) -> web.StreamResponse:
    """DELETE by digest removes the manifest and its tags; by tag removes just the tag."""
    _check_reference(reference, 404)
    if not await store.delete_manifest(name, reference):
        raise manifest_unknown(reference)
    return web.Response(status=202, headers=API_VERSION_HEADER)


async def referrers(request: web.Request, store: Store, name: str, digest: str) -> web.StreamResponse:
    """An image index of the manifests whose ``subject`` is ``digest``; ``?artifactType=`` filters."""
    try:
        parse_digest(digest)
    except DigestError as exc:
        raise digest_invalid(str(exc)) from None
    artifact_type = request.query.get("artifactType")
    headers = {**API_VERSION_HEADER}
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": await store.manifests.referrers(name, digest, artifact_type)}
    return web.Response(status=200, body=json.dumps(index).encode(), content_type=OCI_INDEX,
                        headers=headers)


def _page(request: web.Request) -> tuple[int | None, str | None]:
    raw_n = request.query.get("n")
    n = None
    if raw_n is not None:
        if not re.fullmatch(r"[0-9]{1,9}", raw_n):  # ASCII only: "²".isdigit() is True, int("²") fails
            raise RegistryError(400, "PAGINATION_NUMBER_INVALID", f"n must be a non-negative integer, not {raw_n[:50]!r}")
        n = int(raw_n)
    return n, request.query.get("last") or None


def _paged(request: web.Request, items: list[str], n: int | None, key: str, body: dict[str, Any]) -> web.Response:
    """Respond with at most ``n`` items, plus an RFC 5988 ``Link`` to the next page if there is one."""
    headers = {**API_VERSION_HEADER}
    if n is not None and len(items) > n:
        items = items[:n]
        if items:
            query = urlencode({"n": n, "last": items[-1]})
            headers["Link"] = f'<{request.path}?{query}>; rel="next"'
    body[key] = items
    return web.Response(status=200, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


async def list_tags(request: web.Request, store: Store, name: str) -> web.StreamResponse:
    n, last = _page(request)
    if not await store.manifests.repository_exists(name):
        raise name_unknown(name)
    tags = await store.manifests.tags(name, None if n is None else n + 1, last)
    return _paged(request, tags, n, "tags", {"name": name})


async def catalog(request: web.Request, store: Store) -> web.StreamResponse:
    n, last = _page(request)
    return _paged(request, await store.manifests.repositories(None if n is None else n + 1, last), n, "repositories", {})
