"""Build-time inputs that must not become content: served over loopback for one build.

pip inside the image needs the host's CA bundle (corporate proxies, private indexes) and its
requirements may carry index credentials. Neither may enter a layer, a hash, the Dockerfile or
the log. The classic Docker builder has no secret mounts, so the RUN step fetches them from this
server (builds use the host network) into a temp file it deletes before the layer is committed.
The URL carries a random token and lives only as long as the build. Private wheels the store
holds are served the same way (from their blob files), so a build needs no route to wherever
a definition's wheel URL points, nor a token for the daemon itself.
"""

from __future__ import annotations

import os
import secrets
import ssl
from pathlib import Path

from aiohttp import web


def host_ca_bundle(configured: str | None = None) -> Path | None:
    """The CA bundle pip on this host trusts: the configured one, pip's own settings, the
    OpenSSL environment, then Debian/RHEL's system bundles."""
    candidates = [configured, os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                  os.environ.get("REQUESTS_CA_BUNDLE"), ssl.get_default_verify_paths().cafile,
                  "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


class HelperServer:
    """``GET /<token>/<name>`` → the registered bytes or file; ``PUT /<token>/<name>`` → what a
    build step reports back (pip's installation report); everything else 404."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        self.files: dict[str, bytes | Path] = {}
        self.received: dict[str, bytes] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    def add(self, name: str, data: bytes | Path) -> str:
        """Serve ``data`` (bytes, or a file sent as it is: wheels may be large) as ``name``."""
        self.files[name] = data
        return f"{self.url}/{name}"

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token or request.match_info["name"] not in self.files:
            raise web.HTTPNotFound()
        found = self.files[request.match_info["name"]]
        if isinstance(found, Path):
            return web.FileResponse(found, headers={"Content-Type": "application/octet-stream"})
        return web.Response(body=found, content_type="application/octet-stream")

    async def _receive(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            raise web.HTTPNotFound()
        self.received[request.match_info["name"]] = await request.read()
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/{token}/{name:.+}", self._serve)
        app.router.add_put("/{token}/{name:.+}", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/{self.token}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
