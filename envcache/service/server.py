"""The daemon on the network: its listening socket, TLS, the connection cap, the timeouts.

WHY each part, from a fault-injection campaign (issue 13):

- **Bind first.** The port is taken before the data directory is opened, so a port conflict is
  one clear line (exit 1) and leaves nothing behind.
- **Idle and header time.** aiohttp has no header-read timeout of its own. What it has
  (``web_protocol.RequestHandler``, from aiohttp 3.14.4, aio-libs/aiohttp#13681) is a keep-alive
  timer armed when a connection opens and again after each response, which closes the
  connection if by then no *complete* request has been parsed — a client trickling header bytes
  does not push it back. With ``keepalive_timeout`` set to ``[server] idle_timeout`` that one
  deadline bounds idle connections, connections that never send a request and half-sent headers
  alike. (Body time is bounded where bodies are read: :mod:`envcache.registry.body`.)
- **A connection cap with a clean refusal.** Past ``max_connections`` a new connection is
  answered ``503`` with ``Retry-After`` and closed at once, before aiohttp allocates anything for
  it, so idle or stalled clients can never use up the file descriptors that uploads, blob files
  and SQLite need (accept() failing with EMFILE is what used to make pushes fail with 500). The
  default is half the open-file limit: a connection may hold a second descriptor (an upload's
  spool file, a blob being sent).

Error logs are rate-limited in :mod:`envcache.service.logs`.
"""

from __future__ import annotations

import asyncio
import errno
import json
import resource
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from envcache.errors import EnvcacheError, InvalidInput
from envcache.service.config import ServerConfig

#: asyncio accepts up to this many connections per wake-up, each a descriptor, before any of
#: them can be refused (aiohttp's default backlog).
BACKLOG = 128
#: Refused connections linger this long, so the client reads the 503 before the close; at most
#: this many at once, the rest close at once.
REFUSAL_LINGER = 1.0
MAX_LINGERING = 32
#: File descriptors kept out of the connection budget: one accept burst, the lingering
#: refusals, and what the daemon itself holds open (SQLite, logs, the parser's pipes, engines).
RESERVED_FILES = BACKLOG + MAX_LINGERING + 96


class ListenFailed(EnvcacheError):
    """The address cannot be listened on (in use, not ours): the message says what to do."""

    exit_code = 1


@dataclass
class Listening:
    """A bound socket (not yet accepting) and what it serves."""

    tls: ssl.SSLContext | None
    max_connections: int
    server: asyncio.AbstractServer = field(init=False)
    handler: Any = None  # the runner's aiohttp Server once started; connections get 503 until then
    open: int = 0        # connections being served (counted from accept to close)

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]


def tls_context(settings: ServerConfig) -> ssl.SSLContext | None:
    """The server-side TLS context from ``tls_certificate``/``tls_key``, or None (plain HTTP)."""
    cert, key = settings.tls_certificate, settings.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise InvalidInput("server.tls_certificate and server.tls_key go together: set both, or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(Path(cert).expanduser(), Path(key).expanduser())
    except FileNotFoundError as exc:
        raise InvalidInput(f"server.tls_certificate/tls_key: {exc.filename}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise InvalidInput(f"server.tls_certificate/tls_key: cannot load the certificate and key "
                           f"({cert}, {key}): {exc}") from None
    return context


def connection_cap(configured: int) -> int:
    """``configured``, or (0) half of what the open-file limit leaves after the reserve."""
    if configured:
        return configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (soft - RESERVED_FILES) // 2)


async def listen(settings: ServerConfig) -> Listening:
    """Bind ``host:port`` (not accepting yet); :class:`ListenFailed` with a hint if it cannot."""
    tls = tls_context(settings)
    listening = Listening(tls, connection_cap(settings.max_connections))
    loop = asyncio.get_running_loop()
    try:
        listening.server = await loop.create_server(
            lambda: _protocol(listening), settings.host, settings.port, ssl=tls, backlog=BACKLOG,
            ssl_handshake_timeout=float(settings.idle_timeout) if tls else None, start_serving=False)
    except OSError as exc:
        address = f"{settings.host}:{settings.port}"
        if exc.errno == errno.EADDRINUSE:
            raise ListenFailed(f"cannot listen on {address}: the port is already in use (another envcache "
                               "daemon or another program); choose another with --port PORT, or --port 0 "
                               "for any free port") from None
        if exc.errno == errno.EACCES:
            raise ListenFailed(f"cannot listen on {address}: permission denied (ports below 1024 need "
                               "privileges); choose another with --port PORT") from None
        raise ListenFailed(f"cannot listen on {address}: {exc.strerror or exc}") from None
    return listening


class ListeningSite(web.BaseSite):
    """An aiohttp site over a socket :func:`listen` bound earlier; starts accepting on start()."""

    def __init__(self, app_runner: web.AppRunner, listening: Listening) -> None:
        super().__init__(app_runner, ssl_context=listening.tls, backlog=BACKLOG)
        self.listening = listening

    @property
    def name(self) -> str:
        scheme = "https" if self.listening.tls else "http"
        host, port = self.listening.server.sockets[0].getsockname()[:2]
        return f"{scheme}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        self.listening.handler = self._runner.server
        self._server = self.listening.server
        await self.listening.server.start_serving()


def _protocol(listening: Listening) -> asyncio.BaseProtocol:
    if listening.handler is None or listening.open >= listening.max_connections:
        return _Refusal(listening.max_connections)
    return _Counted(listening.handler(), listening)


class _Counted(asyncio.Protocol):
    """aiohttp's request handler, counted from accept to close.

    WHY not ``Server.connections``: asyncio accepts a burst of connections and creates all their
    protocols before any of them is connected, so a count taken at connection time lets a burst
    through past the cap; this one counts when the protocol is made.
    """

    __slots__ = ("inner", "listening")

    def __init__(self, inner: asyncio.Protocol, listening: Listening) -> None:
        self.inner = inner
        self.listening = listening
        listening.open += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listening.open -= 1
        self.inner.connection_lost(exc)


class _Refusal(asyncio.Protocol):
    """Answers 503 (in the JSON API's and the OCI error shape alike) and closes."""

    lingering = 0  # refusals still open, process-wide: under a flood they close at once

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.transport: asyncio.Transport | None = None
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        assert self.transport is not None
        message = f"the daemon is serving its maximum of {self.cap} connections; retry shortly"
        body = json.dumps({"error": {"status": 503, "message": message},
                           "errors": [{"code": "TOOMANYREQUESTS", "message": message}]}).encode()
        self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                             b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        if _Refusal.lingering >= MAX_LINGERING or not self.transport.can_write_eof():
            self.transport.close()
            return
        # Half-close and keep reading (discarding) briefly: closing with the request unread would
        # reset the connection and the client might never see the 503.
        self.transport.write_eof()
        _Refusal.lingering += 1
        self.counted = True
        asyncio.get_running_loop().call_later(REFUSAL_LINGER, self.transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            _Refusal.lingering -= 1


async def serve(app: web.Application, settings: ServerConfig, listening: Listening,
                **kwargs: Any) -> tuple[web.AppRunner, str]:
    """Start serving ``app`` on ``listening``; returns the runner (clean up to stop) and its URL."""
    app_runner = web.AppRunner(app, keepalive_timeout=float(settings.idle_timeout), **kwargs)
    await app_runner.setup()
    site = ListeningSite(app_runner, listening)
    await site.start()
    scheme = "https" if listening.tls else "http"
    return app_runner, f"{scheme}://{settings.host}:{listening.port}"
