"""``envcache.AsyncClient``: the same API as :class:`envcache.Client`, on aiohttp."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from envcache.client.base import Endpoints, error_for, finished, headers, is_miss, query_string, unavailable
from envcache.wire import daemon_url

if TYPE_CHECKING:
    from envcache.client.base import DefinitionLike, EnvironmentRef


class AsyncClient(Endpoints):
    """``async with AsyncClient() as client: image = await client.resolve(defn)``."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float | None = 3600) -> None:
        self.url = daemon_url(url)
        self.token = token or os.environ.get("ENVCACHE_TOKEN")
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=10)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=headers(self.token), timeout=self._timeout)
        return self._session

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                       query: dict[str, Any] | None = None, none_on_404: bool = False, upload: Path | None = None) -> Any:
        data: Any = json.dumps(body) if body is not None else None
        content_type = "application/json" if body is not None else None
        try:
            with contextlib.ExitStack() as stack:
                if upload is not None:  # streamed by aiohttp from the open file
                    data, content_type = stack.enter_context(open(upload, "rb")), "application/octet-stream"
                async with self._sess().request(method, self.url + path + query_string(query), data=data,
                                                headers={"Content-Type": content_type} if content_type else None
                                                ) as response:
                    payload = await response.read()
                    status = response.status
        except aiohttp.ClientConnectionError as exc:
            raise unavailable(self.url, exc) from None
        if status >= 400:
            if none_on_404 and status == 404 and is_miss(payload):
                return None
            raise error_for(status, payload)
        return json.loads(payload)

    async def build_log(self, build_id: str, follow: bool = True) -> AsyncIterator[str]:
        try:
            response = await self._sess().get(f"{self.url}/api/v1/builds/{build_id}/log",
                                              params={"follow": str(follow).lower()},
                                              timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        except aiohttp.ClientConnectionError as exc:
            raise unavailable(self.url, exc) from None
        async with response:
            if response.status >= 400:
                raise error_for(response.status, await response.read())
            async for raw in response.content:
                yield raw.decode("utf-8", "replace").rstrip("\n")

    async def follow_build(self, build_id: str, on_log: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Wait for the build to end, passing each log line to ``on_log``; its final document."""
        async for line in self.build_log(build_id):
            if on_log is not None:
                on_log(line)
        return await self.build(build_id)

    async def ensure_image(self, definition: DefinitionLike | None = None, variant: str = "auto", *,
                           refresh: bool = False, environment: EnvironmentRef | None = None,
                           on_log: Callable[[str], None] | None = None) -> dict[str, Any]:
        """ensure, then follow the build (if any) to its end; the final answer with ``image``.

        Raises :class:`~envcache.errors.EnvcacheError` when the build failed.
        """
        answer = await self.ensure(definition, variant, refresh=refresh, environment=environment)
        if answer["status"] == "hit":
            return answer
        return finished(await self.follow_build(answer["build"]["id"], on_log))
