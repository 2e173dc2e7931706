"""``envcache.Client``: the blocking client, on the standard library only (``urllib``).

No aiohttp or asyncio import, so a CLI process that asks one question stays fast to start.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envcache.client.base import Endpoints, error_for, finished, headers, is_miss, query_string, unavailable
from envcache.wire import daemon_url
from envcache.errors import EnvcacheError

if TYPE_CHECKING:
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
              upload: Path | None = None) -> Any:
        """One request; HTTP errors come back as :class:`_HTTPFailure`, a dead daemon as unavailable."""
        import http.client
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path + query_string(query), data=data, method=method,
                                         headers=headers(self.token))
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with contextlib.ExitStack() as stack:
                if upload is not None:  # streamed from the open file by http.client, never read whole
                    handle = stack.enter_context(open(upload, "rb"))
                    request.data = handle
                    request.add_header("Content-Type", "application/octet-stream")
                    request.add_header("Content-Length", str(os.fstat(handle.fileno()).st_size))
                return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise _HTTPFailure(exc.code, exc.read()) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise unavailable(self.url, getattr(exc, "reason", exc)) from None
        except http.client.HTTPException as exc:
            raise _malformed(self.url, exc) from None

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 query: dict[str, Any] | None = None, none_on_404: bool = False, upload: Path | None = None) -> Any:
        import http.client

        try:
            with self._open(method, path, body, query, upload) as response:
                status, payload = response.status, response.read()
        except _HTTPFailure as failure:
            status, payload = failure.status, failure.body
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

    def build_log(self, build_id: str, follow: bool = True) -> Iterator[str]:
        """The build's log lines, as they are written while the build runs."""
        try:
            response = self._open("GET", f"/api/v1/builds/{build_id}/log", None, {"follow": str(follow).lower()})
        except _HTTPFailure as failure:
            raise error_for(failure.status, failure.body) from None
        with response:
            for raw in response:
                yield raw.decode("utf-8", "replace").rstrip("\n")

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


def _malformed(url: str, exc: Exception) -> EnvcacheError:
    return EnvcacheError(f"the envcache daemon at {url} gave a malformed answer: {type(exc).__name__}: {exc}")


class _HTTPFailure(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body
