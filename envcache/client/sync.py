"""``envcache.Client``: the blocking client, on the standard library's ``http.client``.

No aiohttp or asyncio import, so a CLI process that asks one question stays fast to start.

WHY ``http.client`` and not ``urllib.request``: the CLI's hit is a whole process, and
``urllib.request`` adds its own import tree (openers, handlers, cookies, ``base64``, ``hashlib``,
``tempfile``…) on top of ``http.client``, which is all a JSON request to one known host needs.
The price: proxy variables (``HTTP_PROXY`` …) are not read — the client connects to the daemon
directly, as the daemon is meant to be on the machine or the local network.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator

from envcache.client.base import Endpoints, error_for, finished, headers, is_miss, query_string, unavailable
from envcache.errors import EnvcacheError
from envcache.wire import daemon_url

TYPE_CHECKING = False  # typing is not imported at run time: README, "The fast hit path"
if TYPE_CHECKING:
    import http.client
    import socket
    from pathlib import Path
    from typing import Any

    from envcache.client.base import DefinitionLike, EnvironmentRef


class Client(Endpoints):
    """Talks to an envcache daemon. ``url`` defaults to ``$ENVCACHE_URL`` or http://127.0.0.1:5050;
    ``token`` to ``$ENVCACHE_TOKEN`` (needed only when the daemon has auth configured)."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float | None = 3600) -> None:
        self.url = daemon_url(url)
        self.token = token or os.environ.get("ENVCACHE_TOKEN")
        self.timeout = timeout

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _open(self, method: str, path: str, body: dict[str, Any] | None, query: dict[str, Any] | None,
              accept: str = "application/json", upload: Path | None = None) -> http.client.HTTPResponse:
        """One request on a fresh connection; the response is open (the caller reads and closes it).

        A dead daemon raises :class:`DaemonUnavailable`, a peer that does not speak HTTP a
        "malformed answer" error. The connection closes with the response.
        """
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EnvcacheError(f"daemon URL {self.url!r}: expected http://HOST:PORT or https://HOST:PORT")
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = kind(parts.netloc, timeout=self.timeout)
        connection._create_connection = _connect  # type: ignore[attr-defined]  # see _connect
        data = json.dumps(body).encode() if body is not None else None
        sent = {**headers(self.token), "Accept": accept}
        if data is not None:
            sent["Content-Type"] = "application/json"
        try:
            with contextlib.ExitStack() as stack:
                payload: Any = data
                if upload is not None:  # streamed from the open file by http.client, never read whole
                    payload = stack.enter_context(open(upload, "rb"))
                    sent["Content-Type"] = "application/octet-stream"
                    sent["Content-Length"] = str(os.fstat(payload.fileno()).st_size)
                connection.request(method, parts.path + path + query_string(query), body=payload, headers=sent)
                return connection.getresponse()
        except OSError as exc:  # refused, reset, timed out, TLS failed
            connection.close()
            raise unavailable(self.url, exc) from None
        except http.client.HTTPException as exc:
            connection.close()
            raise _malformed(self.url, exc) from None

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 query: dict[str, Any] | None = None, none_on_404: bool = False, upload: Path | None = None) -> Any:
        import http.client

        with self._open(method, path, body, query, upload=upload) as response:
            try:
                status, payload = response.status, response.read()
            except http.client.HTTPException as exc:  # e.g. the body was cut short
                raise _malformed(self.url, exc) from None
        if status < 400:
            try:
                return json.loads(payload)
            except ValueError as exc:
                raise _malformed(self.url, exc) from None
        if none_on_404 and status == 404 and is_miss(payload):
            return None
        raise error_for(status, payload)

    def _stream(self, method: str, path: str, body: dict[str, Any] | None = None,
                query: dict[str, Any] | None = None, accept: str = "text/plain") -> Iterator[str]:
        """The answer's lines as they arrive (a build log, warm's events)."""
        with self._open(method, path, body, query, accept) as response:
            if response.status >= 400:
                raise error_for(response.status, response.read())
            for raw in response:
                yield raw.decode("utf-8", "replace").rstrip("\n")

    def build_log(self, build_id: str, follow: bool = True) -> Iterator[str]:
        """The build's log lines, as they are written while the build runs."""
        return self._stream("GET", f"/api/v1/builds/{build_id}/log", query={"follow": str(follow).lower()})

    def warm_events(self, items: list[dict[str, Any]], variants: list[str] | None = None, concurrency: int = 4,
                    refresh: bool = False) -> Iterator[dict[str, Any]]:
        """``warm`` as it happens: one event per item started and finished, ``running`` while
        nothing else happens, and the ``report`` last (README, "Warming a CI cache")."""
        for line in self._stream("POST", "/api/v1/warm", self.warm_body(items, variants, concurrency, refresh),
                                 accept="application/x-ndjson"):
            if line:
                yield json.loads(line)

    def follow_build(self, build_id: str, on_log: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Wait for the build to end, passing each log line to ``on_log``; its final document."""
        for line in self.build_log(build_id):
            if on_log is not None:
                on_log(line)
        return self.build(build_id)

    def ensure_image(self, definition: DefinitionLike | None = None, variant: str = "auto", *,
                     refresh: bool = False, environment: EnvironmentRef | None = None,
                     on_log: Callable[[str], None] | None = None) -> dict[str, Any]:
        """ensure, then follow the build (if any) to its end; the final answer with ``image``.

        Raises :class:`~envcache.errors.EnvcacheError` when the build failed.
        """
        answer = self.ensure(definition, variant, refresh=refresh, environment=environment)
        if answer["status"] == "hit":
            return answer
        return finished(self.follow_build(answer["build"]["id"], on_log))


def _connect(address: tuple[str, int], *args: Any) -> socket.socket:
    """``socket.create_connection`` with an ASCII host given as bytes.

    WHY: given a ``str`` host, ``getaddrinfo`` encodes it with the ``idna`` codec, whose import
    (with ``stringprep`` and ``unicodedata``) costs a cache hit about 5% of its whole process —
    for ``127.0.0.1``. ``http.client`` calls this hook (the attribute it keeps for tests); an
    internationalised host name still goes the ``idna`` way.
    """
    import socket

    host, port = address
    return socket.create_connection((host.encode("ascii") if host.isascii() else host, port), *args)


def _malformed(url: str, exc: Exception) -> EnvcacheError:
    return EnvcacheError(f"the envcache daemon at {url} gave a malformed answer: {type(exc).__name__}: {exc}")
