"""The OCI Distribution API (v1.1) under /v2/, over a :class:`~envcache.store.Store`.

Repository names contain slashes, so aiohttp's router cannot split ``/v2/<name>/<kind>/<ref>``
reliably; one catch-all route hands the path to :func:`_dispatch`, which matches the spec's
endpoint table, validates the name against the spec grammar (``NAME_INVALID`` before anything
else happens) and turns every failure into the spec's error body.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from envcache.errors import EnvcacheError, NotFound
from envcache.registry import blobs, manifests
from envcache.registry.blobs import UploadState
from envcache.registry.body import BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT, BodyTimeout
from envcache.registry.errors import API_VERSION_HEADER, RegistryError, name_invalid
from envcache.oci import DigestError, ManifestInvalid, NameInvalid, TagInvalid, check_name
from envcache.store import BlobInUse, DigestMismatch, InsufficientStorage, SizeMismatch, Store

log = logging.getLogger(__name__)

UPLOADS = web.AppKey("registry.uploads", UploadState)

_CODES: dict[type[EnvcacheError], str] = {
    BodyTimeout: "BLOB_UPLOAD_INVALID",
    DigestError: "DIGEST_INVALID",
    DigestMismatch: "DIGEST_INVALID",
    SizeMismatch: "SIZE_INVALID",
    NameInvalid: "NAME_INVALID",
    TagInvalid: "MANIFEST_INVALID",
    ManifestInvalid: "MANIFEST_INVALID",
    NotFound: "MANIFEST_UNKNOWN",
    BlobInUse: "DENIED",  # 405, as zot answers
    InsufficientStorage: "UNKNOWN",  # 507; the spec has no code for it, the message names disk space
}

Handler = Callable[..., Awaitable[web.StreamResponse]]

# (pattern over the path after "/v2/", {method: handler}, whether the handler takes the upload state).
# Matched in full with DOTALL: a name or reference with a newline (``$`` would match before it,
# ``.`` would stop at it) reaches the grammar checks and is refused there, in the spec's shape.
_ENDPOINTS: list[tuple[re.Pattern[str], dict[str, Handler], bool]] = [
    (re.compile(r"(?P<name>.+)/blobs/uploads/?", re.DOTALL), {"POST": blobs.start_upload}, True),
    (re.compile(r"(?P<name>.+)/blobs/uploads/(?P<ref>[^/]+)", re.DOTALL),
     {"GET": blobs.upload_status, "PATCH": blobs.patch_upload, "PUT": blobs.finish_upload,
      "DELETE": blobs.cancel_upload}, True),
    (re.compile(r"(?P<name>.+)/blobs/(?P<ref>[^/]+)", re.DOTALL),
     {"GET": blobs.get_blob, "HEAD": blobs.get_blob, "DELETE": blobs.delete_blob}, False),
    (re.compile(r"(?P<name>.+)/manifests/(?P<ref>[^/]+)", re.DOTALL),
     {"GET": manifests.get_manifest, "HEAD": manifests.get_manifest, "PUT": manifests.put_manifest,
      "DELETE": manifests.delete_manifest}, False),
    (re.compile(r"(?P<name>.+)/referrers/(?P<ref>[^/]+)", re.DOTALL), {"GET": manifests.referrers}, False),
    (re.compile(r"(?P<name>.+)/tags/list", re.DOTALL), {"GET": manifests.list_tags}, False),
]


def setup(app: web.Application, store: Store, *, upload_ttl: float,
          body_timeout: float = DEFAULT_BODY_TIMEOUT) -> UploadState:
    """Mount the registry on ``app``; sessions idle for ``upload_ttl`` seconds are expired, a
    body that sends nothing for ``body_timeout`` seconds is answered 408 (every body the app
    reads, the JSON API's too).

    Returns the process's upload bookkeeping (``app[UPLOADS]``): the daemon's periodic expiry and
    gc ask it which sessions are receiving bytes right now.
    """
    state = app[UPLOADS] = UploadState(ttl=upload_ttl)
    app[BODY_TIMEOUT] = body_timeout

    async def dispatch(request: web.Request) -> web.StreamResponse:
        return await _dispatch(request, store, state)

    app.router.add_route("*", "/v2", dispatch)
    app.router.add_route("*", r"/v2/{tail:[\s\S]*}", dispatch)  # any character: see _ENDPOINTS
    return state


async def _dispatch(request: web.Request, store: Store, uploads: UploadState) -> web.StreamResponse:
    head = request.method == "HEAD"
    try:
        return await _route(request, store, uploads)
    except RegistryError as exc:
        return exc.response(head=head)
    except EnvcacheError as exc:  # store-level validation that a handler did not map itself
        return RegistryError(exc.http_status, _CODES.get(type(exc), "UNSUPPORTED"), str(exc)).response(head=head)
    except web.RequestPayloadError as exc:  # a body that cannot be read (bad Content-Encoding, cut short)
        detail = str(exc).splitlines()[-1].strip() or str(exc)
        return RegistryError(400, "BLOB_UPLOAD_INVALID", f"request body could not be read: {detail}").response(head=head)
    except web.HTTPException:
        raise
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            # Out of file descriptors (the connection cap keeps a reserve, so only under outside
            # pressure): a clean retry-later, not a 500 with a traceback.
            log.warning("out of file descriptors on %s %s", request.method, request.path[:300])
            return RegistryError(503, "TOOMANYREQUESTS", "the daemon is out of file descriptors; retry shortly",
                                 headers={"Retry-After": "1"}).response(head=head)
        # A bug of ours: log it, but answer in the spec's shape so clients show a reason.
        log.exception("internal error on %s %s", request.method, request.path[:300])
        return RegistryError(500, "UNKNOWN", "internal error (see the daemon log)").response(head=head)


async def _route(request: web.Request, store: Store, uploads: UploadState) -> web.StreamResponse:
    path = request.path
    if path in ("/v2", "/v2/"):
        if request.method not in ("GET", "HEAD"):
            raise _unsupported(request)
        return web.Response(status=200, body=b"{}", content_type="application/json", headers=API_VERSION_HEADER)
    tail = path[len("/v2/"):]
    if tail == "_catalog":
        if request.method != "GET":
            raise _unsupported(request)
        return await manifests.catalog(request, store)
    for pattern, methods, wants_uploads in _ENDPOINTS:
        match = pattern.fullmatch(tail)
        if match is None:
            continue
        name = match.group("name")
        try:
            check_name(name)
        except NameInvalid as exc:
            raise name_invalid(str(exc)) from None
        handler = methods.get(request.method)
        if handler is None:
            raise _unsupported(request)
        args: list[Any] = [request, store]
        if wants_uploads:
            args.append(uploads)
        args.append(name)
        if "ref" in pattern.groupindex:
            args.append(match.group("ref"))
        return await handler(*args)
    raise RegistryError(404, "UNSUPPORTED", f"no registry endpoint at {path[:300]}")


def _unsupported(request: web.Request) -> RegistryError:
    return RegistryError(405, "UNSUPPORTED", f"{request.method} is not supported on {request.path[:300]}")
