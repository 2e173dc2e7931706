"""Blob endpoints: HEAD/GET/DELETE a blob, and the upload protocol (POST/PATCH/GET/PUT/DELETE).

Uploads in progress live in ``uploads/<uuid>`` (see :mod:`envcache.store`) with the acknowledged
offset in SQLite, so they survive a restart; the running sha256 is kept in memory only as a
shortcut — when it is missing (after a restart, or for a sha512 digest) the file is re-hashed.
Nothing reaches ``blobs/`` before its digest has been verified.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass, field

from aiohttp import web

from envcache.registry.errors import (
    API_VERSION_HEADER,
    RegistryError,
    blob_unknown,
    digest_invalid,
    upload_unknown,
)
from envcache.oci import DigestError, NameInvalid, check_name, parse_digest
from envcache.store import DigestMismatch, SizeMismatch, Store, UploadSession
from envcache.store.blobs import hash_file, pump

# ASCII digits, at most 19 (an int64 offset): "\d+" took any Unicode digit and any length,
# and int() of thousands of digits raises instead of answering 400.
_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?([0-9]{1,19})-([0-9]{1,19})$")


@dataclass
class _Progress:
    """Running hash of an upload's bytes [0, offset)."""

    offset: int = 0
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)


@dataclass
class UploadState:
    """Per-process upload bookkeeping: one lock per session, and the running hashes."""

    ttl: float
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    progress: dict[str, _Progress] = field(default_factory=dict)

    def lock(self, session_id: str) -> asyncio.Lock:
        return self.locks.setdefault(session_id, asyncio.Lock())

    def forget(self, session_id: str) -> None:
        self.locks.pop(session_id, None)
        self.progress.pop(session_id, None)


def _headers(**extra: str) -> dict[str, str]:
    return {**API_VERSION_HEADER, **extra}


def _check_digest(digest: str | None) -> str:
    if not digest:
        raise digest_invalid("a digest query parameter is required")
    try:
        parse_digest(digest)
    except DigestError as exc:
        raise digest_invalid(str(exc)) from None
    return digest


def _upload_headers(name: str, session: UploadSession | str, offset: int) -> dict[str, str]:
    session_id = session if isinstance(session, str) else session.id
    return _headers(
        Location=f"/v2/{name}/blobs/uploads/{session_id}",
        Range=f"0-{max(offset - 1, 0)}",
        **{"Docker-Upload-UUID": session_id},
    )


# -- blobs -------------------------------------------------------------------------------------
async def get_blob(request: web.Request, store: Store, name: str, digest: str) -> web.StreamResponse:
    """HEAD/GET a blob; GET goes through sendfile, with Range handled by FileResponse (206/416)."""
    _check_digest(digest)
    if not store.blob_linked(name, digest):
        raise blob_unknown(digest)
    path = store.blobs.path(digest)
    store.blobs.touch(digest)
    headers = _headers(**{"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream",
                          "Accept-Ranges": "bytes"})
    if request.method == "HEAD":
        headers["Content-Length"] = str(path.stat().st_size)
        return web.Response(status=200, headers=headers)
    return web.FileResponse(path, headers=headers)


async def delete_blob(request: web.Request, store: Store, name: str, digest: str) -> web.StreamResponse:
    _check_digest(digest)
    if not store.unlink_blob(name, digest):
        raise blob_unknown(digest)
    return web.Response(status=202, headers=_headers(**{"Docker-Content-Digest": digest}))


def _blob_created(name: str, digest: str) -> web.Response:
    return web.Response(status=201, headers=_headers(**{
        "Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest}))


# -- uploads -----------------------------------------------------------------------------------
async def start_upload(request: web.Request, store: Store, state: UploadState, name: str) -> web.StreamResponse:
    """POST: cross-repository mount, monolithic upload (``?digest=``), or a new session."""
    query = request.query
    if "mount" in query:
        digest = _check_digest(query["mount"])
        source = query.get("from")
        if source is not None:
            try:
                check_name(source)
            except NameInvalid:
                raise RegistryError(400, "NAME_INVALID", f"invalid repository name in from: {source[:300]!r}") from None
        available = store.blob_linked(source, digest) if source else store.blobs.exists(digest)
        if available:
            store.link_blob(name, digest)
            return _blob_created(name, digest)
        # Not mountable: the spec says fall back to a regular upload session.
    elif "digest" in query:
        digest = _check_digest(query["digest"])
        try:
            digest, _ = await store.blobs.write(request.content.iter_any(), digest, request.content_length)
        except DigestMismatch as exc:
            raise digest_invalid(str(exc)) from None
        except SizeMismatch as exc:
            raise RegistryError(400, "SIZE_INVALID", str(exc)) from None
        store.link_blob(name, digest)
        return _blob_created(name, digest)
    session = store.create_upload(name)
    state.progress[session.id] = _Progress()
    return web.Response(status=202, headers=_upload_headers(name, session, 0))


def _session(store: Store, state: UploadState, name: str, session_id: str) -> UploadSession:
    session = store.get_upload(session_id)
    if session is None or session.repository != name:
        raise upload_unknown(session_id)
    if session.updated < time.time() - state.ttl and not state.lock(session_id).locked():
        store.delete_upload(session_id)
        state.forget(session_id)
        raise upload_unknown(session_id)
    return session


async def upload_status(request: web.Request, store: Store, state: UploadState, name: str,
                        session_id: str) -> web.StreamResponse:
    session = _session(store, state, name, session_id)
    return web.Response(status=204, headers=_upload_headers(name, session, session.offset))


async def patch_upload(request: web.Request, store: Store, state: UploadState, name: str,
                       session_id: str) -> web.StreamResponse:
    """PATCH: append one chunk (``Content-Range`` checked) or a whole stream."""
    session = _session(store, state, name, session_id)
    async with state.lock(session_id):
        session = _session(store, state, name, session_id)  # re-read: another chunk may have landed
        offset = await _append(request, store, state, session)
    return web.Response(status=202, headers=_upload_headers(name, session, offset))


async def finish_upload(request: web.Request, store: Store, state: UploadState, name: str,
                        session_id: str) -> web.StreamResponse:
    """PUT ``?digest=``: optional last chunk, then verify and move the bytes into the blob tree."""
    session = _session(store, state, name, session_id)
    digest = _check_digest(request.query.get("digest"))
    algorithm = parse_digest(digest)[0]
    async with state.lock(session_id):
        session = _session(store, state, name, session_id)
        offset = session.offset
        if request.content_length or request.headers.get("Content-Range") or request.body_exists:
            offset = await _append(request, store, state, session)
        path = store.upload_path(session_id)
        progress = state.progress.get(session_id)
        if progress is not None and progress.offset == offset and algorithm == "sha256":
            actual = f"sha256:{progress.hasher.hexdigest()}"
        else:
            actual, _ = await asyncio.to_thread(hash_file, path, algorithm)
        if actual != digest:
            store.delete_upload(session_id)
            state.forget(session_id)
            raise digest_invalid(f"uploaded content has digest {actual}, not {digest}")
        await asyncio.to_thread(store.blobs.place, path, digest)
        store.blobs.record(digest, offset, None)
        store.link_blob(name, digest)
        store.delete_upload(session_id)
    state.forget(session_id)
    return _blob_created(name, digest)


async def cancel_upload(request: web.Request, store: Store, state: UploadState, name: str,
                        session_id: str) -> web.StreamResponse:
    _session(store, state, name, session_id)
    async with state.lock(session_id):
        store.delete_upload(session_id)
    state.forget(session_id)
    return web.Response(status=204, headers=_headers())


async def _append(request: web.Request, store: Store, state: UploadState, session: UploadSession) -> int:
    """Write the request body at the session's offset; returns the new acknowledged offset.

    On any failure (bad range, short body, client gone) the file is cut back to the old offset,
    so a half-received chunk is never acknowledged.
    """
    declared = request.content_length
    content_range = request.headers.get("Content-Range")
    if content_range is not None:
        match = _CONTENT_RANGE.match(content_range.strip())
        if not match:
            raise RegistryError(400, "BLOB_UPLOAD_INVALID", f"malformed Content-Range {content_range[:100]!r}")
        start, end = int(match.group(1)), int(match.group(2))
        if start != session.offset or end < start:
            raise RegistryError(
                416, "BLOB_UPLOAD_INVALID",
                f"chunk {start}-{end} does not continue the upload at offset {session.offset}",
                headers=_upload_headers(session.repository, session, session.offset),
            )
        if declared is not None and declared != end - start + 1:
            raise RegistryError(400, "SIZE_INVALID",
                                f"Content-Length {declared} does not match Content-Range {start}-{end}")
        declared = end - start + 1
    progress = state.progress.get(session.id)
    if progress is not None and progress.offset != session.offset:
        progress = None
    path = store.upload_path(session.id)
    with open(path, "r+b") as out:
        out.seek(session.offset)
        try:
            written = await pump(request.content.iter_any(), out, progress.hasher if progress else None)
            if declared is not None and written != declared:
                raise RegistryError(400, "SIZE_INVALID", f"received {written} bytes, Content-Length said {declared}")
        except BaseException:
            out.truncate(session.offset)
            state.progress.pop(session.id, None)
            raise
    offset = session.offset + written
    store.set_upload_offset(session.id, offset)
    if progress is not None:
        progress.offset = offset
        state.progress[session.id] = progress
    return offset

