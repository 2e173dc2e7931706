"""Blob endpoints: HEAD/GET/DELETE a blob, and the upload protocol (POST/PATCH/GET/PUT/DELETE).

Handlers are thin, as in distribution: parse and check the request, then one store call
(``write_blob``, ``mount_blob``, ``append_upload``, ``commit_upload``, ``delete_blob``). Uploads in progress survive a restart (the
store keeps their bytes and acknowledged offset); the running sha256 is kept in memory only as a
shortcut — when it is missing (after a restart, or for a sha512 digest) the store re-hashes.
Nothing becomes a blob before its digest has been verified.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass, field, replace

from aiohttp import web

from envcache.registry import body
from envcache.registry.errors import (
    API_VERSION_HEADER,
    RegistryError,
    blob_unknown,
    digest_invalid,
    upload_unknown,
)
from envcache.oci import DigestError, NameInvalid, check_name, parse_digest
from envcache.store import DigestMismatch, SizeMismatch, Store, UploadSession

# ASCII digits, at most 19 (an int64 offset): "\d+" took any Unicode digit and any length,
# and int() of thousands of digits raises instead of answering 400.
_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?([0-9]{1,19})-([0-9]{1,19})")


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

    def busy(self, session_id: str) -> bool:
        """Is the session receiving bytes right now? (Expiry must leave it alone.)"""
        lock = self.locks.get(session_id)
        return lock is not None and lock.locked()

    def forget(self, session_id: str) -> None:
        self.locks.pop(session_id, None)
        self.progress.pop(session_id, None)

    async def forget_ended(self, store: Store) -> None:
        """Drop bookkeeping of sessions the store no longer has (expired, collected)."""
        for session_id in {*self.locks, *self.progress}:
            if await store.uploads.get(session_id) is None:
                self.forget(session_id)


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
    """HEAD/GET a blob; GET goes through sendfile (Range handled by FileResponse: 206/416), or a
    redirect when the blob driver hands out URLs."""
    _check_digest(digest)
    if not await store.blob_visible(name, digest):
        raise blob_unknown(digest)
    await store.blobs.touch(digest)
    headers = _headers(**{"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream",
                          "Accept-Ranges": "bytes"})
    if request.method == "HEAD":
        stat = await store.files.stat(digest)
        headers["Content-Length"] = str(stat.size if stat else 0)
        return web.Response(status=200, headers=headers)
    url = store.files.url_for(digest)
    if url is not None:
        raise web.HTTPTemporaryRedirect(url, headers=headers)
    path = store.files.local_path(digest)
    assert path is not None  # a driver without local files hands out URLs
    return web.FileResponse(path, headers=headers)


async def delete_blob(request: web.Request, store: Store, name: str, digest: str) -> web.StreamResponse:
    """202 once the blob is gone from ``name``; 405 DENIED while a manifest there names it."""
    _check_digest(digest)
    if not await store.delete_blob(name, digest):
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
        if await store.mount_blob(name, digest, source):
            return _blob_created(name, digest)
        # Not mountable: the spec says fall back to a regular upload session.
    elif "digest" in query:
        digest = _check_digest(query["digest"])
        try:
            digest, _ = await store.write_blob(body.chunks(request), digest, request.content_length,
                                               repository=name)
        except DigestMismatch as exc:
            raise digest_invalid(str(exc)) from None
        except SizeMismatch as exc:
            raise RegistryError(400, "SIZE_INVALID", str(exc)) from None
        return _blob_created(name, digest)
    session = await store.create_upload(name)
    state.progress[session.id] = _Progress()
    return web.Response(status=202, headers=_upload_headers(name, session, 0))


async def _session(store: Store, state: UploadState, name: str, session_id: str) -> UploadSession:
    session = await store.uploads.get(session_id)
    if session is None or session.repository != name:
        raise upload_unknown(session_id)
    if session.updated < time.time() - state.ttl and not state.lock(session_id).locked():
        await store.drop_upload(session_id)
        state.forget(session_id)
        raise upload_unknown(session_id)
    return session


async def upload_status(request: web.Request, store: Store, state: UploadState, name: str,
                        session_id: str) -> web.StreamResponse:
    session = await _session(store, state, name, session_id)
    return web.Response(status=204, headers=_upload_headers(name, session, session.offset))


async def patch_upload(request: web.Request, store: Store, state: UploadState, name: str,
                       session_id: str) -> web.StreamResponse:
    """PATCH: append one chunk (``Content-Range`` checked) or a whole stream."""
    session = await _session(store, state, name, session_id)
    async with state.lock(session_id):
        session = await _session(store, state, name, session_id)  # re-read: another chunk may have landed
        offset = await _append(request, store, state, session)
    return web.Response(status=202, headers=_upload_headers(name, session, offset))


async def finish_upload(request: web.Request, store: Store, state: UploadState, name: str,
                        session_id: str) -> web.StreamResponse:
    """PUT ``?digest=``: optional last chunk, then one store call verifies, publishes, indexes,
    links and ends the session."""
    session = await _session(store, state, name, session_id)
    digest = _check_digest(request.query.get("digest"))
    algorithm = parse_digest(digest)[0]
    async with state.lock(session_id):
        session = await _session(store, state, name, session_id)
        if request.content_length or request.headers.get("Content-Range") or request.body_exists:
            session = replace(session, offset=await _append(request, store, state, session))
        progress = state.progress.get(session_id)
        received = (f"sha256:{progress.hasher.hexdigest()}"
                    if progress is not None and progress.offset == session.offset and algorithm == "sha256" else None)
        try:
            await store.commit_upload(session, digest, received=received)
        except DigestMismatch as exc:
            state.forget(session_id)
            raise digest_invalid(str(exc)) from None
    state.forget(session_id)
    return _blob_created(name, digest)


async def cancel_upload(request: web.Request, store: Store, state: UploadState, name: str,
                        session_id: str) -> web.StreamResponse:
    await _session(store, state, name, session_id)
    async with state.lock(session_id):
        await store.drop_upload(session_id)
    state.forget(session_id)
    return web.Response(status=204, headers=_headers())


async def _append(request: web.Request, store: Store, state: UploadState, session: UploadSession) -> int:
    """Receive the request body at the session's offset; returns the new acknowledged offset.

    On any failure (bad range, short body, client gone) nothing of the chunk is acknowledged.
    """
    declared = request.content_length
    content_range = request.headers.get("Content-Range")
    if content_range is not None:
        match = _CONTENT_RANGE.fullmatch(content_range.strip())
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
    try:
        offset = await store.append_upload(session, body.chunks(request),
                                           hasher=progress.hasher if progress else None, expected_size=declared)
    except SizeMismatch as exc:
        state.progress.pop(session.id, None)
        raise RegistryError(400, "SIZE_INVALID", f"received {exc.received} bytes, Content-Length said {declared}") from None
    except BaseException:
        state.progress.pop(session.id, None)
        raise
    if progress is not None:
        progress.offset = offset
        state.progress[session.id] = progress
    return offset
