"""An async client for the OCI distribution API, just what copying images needs.

Every network or protocol failure becomes an :class:`UpstreamError` that names the upstream and
the operation, so callers (ensure, push queue, CLI) can report it and fall back, never crash.
Time-outs are per socket read as well as per connect: a registry that accepts the connection and
then says nothing (a stalled socket) must not hang a build.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from envcache.errors import EnvcacheError
from envcache.oci import ACCEPT_MANIFESTS, INDEX_TYPES, MANIFEST_TYPES, MAX_MANIFEST_SIZE, digest_bytes
from envcache.upstream.auth import CachedToken, basic_header, parse_challenge, token_from_response
from envcache.upstream.config import Upstream

CHUNK = 1 << 20


class UpstreamError(EnvcacheError):
    """An upstream registry could not be used (unreachable, refused, timed out, or lied)."""

    exit_code = 4
    http_status = 502


@dataclass(frozen=True)
class RemoteManifest:
    digest: str
    media_type: str
    body: bytes


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 30.0      # longest silence tolerated inside one response


def ssl_context(upstream: Upstream) -> ssl.SSLContext | bool:
    """TLS settings: system trust plus the team's CA file, or no verification when asked."""
    if upstream.url.startswith("http://"):
        return True
    if upstream.insecure:
        return False
    ctx = ssl.create_default_context()
    if upstream.ca_file:
        ctx.load_verify_locations(cafile=str(upstream.ca_file))
    return ctx


class RegistryClient:
    """Talks to one upstream; reuses one aiohttp session and caches bearer tokens per scope."""

    def __init__(self, upstream: Upstream, *, timeouts: Timeouts | None = None,
                 chunk_size: int = 16 * 1024 * 1024) -> None:
        self.upstream = upstream
        self.base = URL(upstream.url)
        self.timeouts = timeouts or Timeouts(connect=min(5.0, upstream.timeout), read=upstream.timeout)
        self.chunk_size = chunk_size       # blobs larger than this are uploaded in PATCH chunks
        self.bytes_in = 0                  # manifest + blob bytes received (benchmarks, status)
        self.bytes_out = 0
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[str, CachedToken] = {}
        self._basic_ok = False             # the registry asked for Basic once: send it up front
        self._mount_ok: bool | None = None

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Per socket, not per request: a big layer may take minutes, but a silent peer must
            # not; waiting for a free pooled connection (many concurrent ensures) is not a failure.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect,
                                            sock_read=self.timeouts.read)
            connector = aiohttp.TCPConnector(ssl=ssl_context(self.upstream), limit=16)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector,
                                                  headers={"User-Agent": "envcache-upstream"})
        return self._session

    # ----------------------------------------------------------------------------- requests

    async def request(self, method: str, url: URL | str, *, scope: str, what: str,
                      headers: dict[str, str] | None = None,
                      body: Callable[[], Any] | None = None) -> aiohttp.ClientResponse:
        """Send a request, answering one auth challenge; the caller releases the response.

        ``body`` is a factory so the request can be re-sent with fresh data after a 401.
        """
        target = url if isinstance(url, URL) else self.base.join(URL(url))
        for attempt in (0, 1):
            hdrs = dict(headers or {})
            auth = self._auth_header(scope)
            if auth:
                hdrs["Authorization"] = auth
            try:
                resp = await self._sess().request(method, target, headers=hdrs,
                                                  data=body() if body else None, allow_redirects=True)
            except (aiohttp.ClientError, asyncio.TimeoutError, ssl.SSLError, OSError) as exc:
                raise self._error(what, _describe(exc)) from exc
            if resp.status != 401:
                return resp
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.release()
            if attempt == 1:
                who = "username/password" if self.upstream.username else "anonymous token"
                raise self._error(what, f"401 Unauthorized: the registry rejected the {who}"
                                        + (f" for {scope}" if scope else ""))
            await self._answer(challenge, scope, what)
        raise AssertionError("unreachable")  # pragma: no cover

    def _auth_header(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token and token.fresh:
            return f"Bearer {token.token}"
        if self.upstream.token and not self.upstream.username:
            return f"Bearer {self.upstream.token}"
        if self._basic_ok and self.upstream.username:
            return basic_header(self.upstream.username, self.upstream.password or "")
        return None

    async def _answer(self, header: str, scope: str, what: str) -> None:
        challenge = parse_challenge(header)
        if challenge is None:
            raise self._error(what, f"401 Unauthorized with an unsupported challenge {header!r}")
        if challenge.scheme == "basic":
            if not self.upstream.username:
                raise self._error(what, "authentication required: set username/password for this upstream")
            self._basic_ok = True
            return
        realm = challenge.params.get("realm")
        if not realm:
            raise self._error(what, "bearer challenge without a realm")
        query: list[tuple[str, str]] = []
        if "service" in challenge.params:
            query.append(("service", challenge.params["service"]))
        # One ``scope`` parameter per scope (a cross-repository mount needs two).
        wanted = scope.split() + (challenge.params.get("scope") or "").split()
        query.extend(("scope", item) for item in dict.fromkeys(wanted))
        hdrs = {}
        if self.upstream.username:
            hdrs["Authorization"] = basic_header(self.upstream.username, self.upstream.password or "")
        try:
            async with self._sess().get(URL(realm).with_query(query), headers=hdrs) as resp:
                if resp.status == 401 and not self.upstream.username:
                    raise self._error(what, f"authentication required: token endpoint {realm} refused "
                                            "anonymous access; set username/password or token for this upstream")
                if resp.status != 200:
                    raise self._error(what, f"token endpoint {realm} answered {resp.status}")
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ssl.SSLError, OSError, ValueError) as exc:
            raise self._error(what, f"token endpoint {realm}: {_describe(exc)}") from exc
        token = token_from_response(data)
        if token is None:
            raise self._error(what, f"token endpoint {realm} returned no token")
        self._tokens[scope] = token

    def _error(self, what: str, detail: str) -> UpstreamError:
        return UpstreamError(f"upstream {self.upstream.url}: {what}: {detail}")

    async def _fail(self, resp: aiohttp.ClientResponse, what: str) -> UpstreamError:
        try:
            text = (await resp.content.read(512)).decode("utf-8", "replace").strip()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            text = ""
        resp.release()
        return self._error(what, f"HTTP {resp.status}" + (f": {text}" if text else ""))

    # ----------------------------------------------------------------------------- reading

    async def list_tags(self, repo: str) -> list[str]:
        what = f"list tags of {repo}"
        resp = await self.request("GET", f"/v2/{repo}/tags/list", scope=_scope(repo, "pull"), what=what)
        async with resp:
            if resp.status == 404:
                return []
            if resp.status != 200:
                raise await self._fail(resp, what)
            try:
                data = await resp.json(content_type=None)
            except ValueError as exc:
                raise self._error(what, "answer is not JSON") from exc
        tags = data.get("tags") if isinstance(data, dict) else None
        return [t for t in tags or [] if isinstance(t, str)]

    async def get_manifest(self, repo: str, ref: str) -> RemoteManifest | None:
        """Fetch and verify a manifest; ``None`` when the registry says it does not exist."""
        what = f"get manifest {repo}:{ref}" if not ref.startswith("sha256:") else f"get manifest {repo}@{ref}"
        resp = await self.request("GET", f"/v2/{repo}/manifests/{ref}", scope=_scope(repo, "pull"),
                                  what=what, headers={"Accept": ACCEPT_MANIFESTS})
        async with resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise await self._fail(resp, what)
            try:
                body = await resp.content.read(MAX_MANIFEST_SIZE + 1)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise self._error(what, _describe(exc)) from exc
            header_digest = resp.headers.get("Docker-Content-Digest")
            header_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        self.bytes_in += len(body)
        if len(body) > MAX_MANIFEST_SIZE:
            raise self._error(what, "manifest larger than 4 MiB")
        digest = digest_bytes(body)
        if ref.startswith("sha256:") and digest != ref:
            raise self._error(what, f"manifest digest mismatch: got {digest}")
        if header_digest and header_digest.startswith("sha256:") and header_digest != digest:
            raise self._error(what, f"manifest digest mismatch: header says {header_digest}, body is {digest}")
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise self._error(what, "manifest is not JSON") from exc
        media_type = (doc.get("mediaType") if isinstance(doc, dict) else None) or header_type
        if media_type not in INDEX_TYPES + MANIFEST_TYPES:
            raise self._error(what, f"unsupported manifest type {media_type!r}")
        return RemoteManifest(digest, media_type, body)

    async def blob_stream(self, repo: str, digest: str,
                          size: int | None = None) -> tuple[aiohttp.ClientResponse, AsyncIterator[bytes]]:
        """Open a blob download; the caller feeds the iterator to a verifying writer.

        With ``size`` (the descriptor's), a registry that sends more than it promised is cut
        off at once rather than allowed to fill the disk before the digest check fails.
        """
        what = f"get blob {repo}@{digest}"
        resp = await self.request("GET", f"/v2/{repo}/blobs/{digest}", scope=_scope(repo, "pull"), what=what)
        if resp.status != 200:
            raise await self._fail(resp, what)

        async def chunks() -> AsyncIterator[bytes]:
            received = 0
            try:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    received += len(chunk)
                    self.bytes_in += len(chunk)
                    if size is not None and received > size:
                        raise self._error(what, f"sent more than the {size} bytes its manifest declares")
                    yield chunk
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise self._error(what, _describe(exc)) from exc
            finally:
                resp.release()

        return resp, chunks()

    # ----------------------------------------------------------------------------- writing

    async def blob_exists(self, repo: str, digest: str) -> bool:
        what = f"check blob {repo}@{digest}"
        resp = await self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=_scope(repo, "pull,push"), what=what)
        async with resp:
            if resp.status == 200:
                return True
            if resp.status == 404:
                return False
            raise await self._fail(resp, what)

    async def mount_blob(self, repo: str, digest: str, source_repo: str) -> tuple[bool, URL | None]:
        """Cross-repository mount: the registry links an existing blob, no bytes travel.

        Returns ``(True, None)`` when mounted. When the registry cannot mount (blob unknown there,
        or no mount support) it answers 202 with a fresh upload session, per the spec: that
        session's URL is returned so the caller uploads into it instead of opening another.
        """
        if self._mount_ok is False:
            return False, None
        what = f"mount {digest} from {source_repo} into {repo}"
        url = self.base.join(URL(f"/v2/{repo}/blobs/uploads/")).with_query({"mount": digest, "from": source_repo})
        scope = f"{_scope(repo, 'pull,push')} {_scope(source_repo, 'pull')}"
        resp = await self.request("POST", url, scope=scope, what=what, headers={"Content-Length": "0"})
        async with resp:
            if resp.status == 201:
                self._mount_ok = True
                return True, None
            if resp.status == 202 and "Location" in resp.headers:
                return False, self._location(resp.headers["Location"])
            if resp.status in (404, 405):
                self._mount_ok = False
                return False, None
            raise await self._fail(resp, what)

    def _location(self, location: str) -> URL:
        loc = URL(location)
        return loc if loc.is_absolute() else self.base.join(loc)

    async def upload_blob(self, repo: str, digest: str, path: Path, session: URL | None = None) -> None:
        """Upload a local blob file: monolithic if small, PATCH chunks if large.

        ``session`` is an upload already opened (by a refused mount); else one is opened here.
        """
        size = path.stat().st_size
        scope = _scope(repo, "pull,push")
        what = f"upload blob {repo}@{digest}"
        location = session
        if location is None:
            resp = await self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, what=what,
                                      headers={"Content-Length": "0"})
            async with resp:
                if resp.status != 202 or "Location" not in resp.headers:
                    raise await self._fail(resp, what)
                location = self._location(resp.headers["Location"])
        if size > self.chunk_size:
            offset = 0
            while offset < size:
                length = min(self.chunk_size, size - offset)
                start = offset
                resp = await self.request(
                    "PATCH", location, scope=scope, what=what,
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Range": f"{start}-{start + length - 1}",
                             "Content-Length": str(length)},
                    body=lambda s=start, n=length: _read_range(path, s, n))
                async with resp:
                    if resp.status != 202 or "Location" not in resp.headers:
                        raise await self._fail(resp, what)
                    location = self._location(resp.headers["Location"])
                offset += length
                self.bytes_out += length
            final_body: Callable[[], Any] | None = None
            final_headers = {"Content-Length": "0"}
        else:
            final_body = lambda: path.read_bytes()  # noqa: E731 - re-sendable after a 401
            final_headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        resp = await self.request("PUT", location.update_query({"digest": digest}), scope=scope,
                                  what=what, headers=final_headers, body=final_body)
        async with resp:
            if resp.status != 201:
                raise await self._fail(resp, what)
        if final_body is not None:
            self.bytes_out += size

    async def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        what = f"put manifest {repo}:{ref}"
        resp = await self.request("PUT", f"/v2/{repo}/manifests/{ref}", scope=_scope(repo, "pull,push"),
                                  what=what, headers={"Content-Type": media_type}, body=lambda: body)
        async with resp:
            if resp.status != 201:
                raise await self._fail(resp, what)
        return digest_bytes(body)


def _scope(repo: str, actions: str) -> str:
    return f"repository:{repo}:{actions}"


def _read_range(path: Path, start: int, length: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(start)
        return fh.read(length)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out (no answer)"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not trusted ({exc.certificate_error}); set ca_file or insecure"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error})"
    text = str(exc) or type(exc).__name__
    return text
