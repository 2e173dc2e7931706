"""What every view shares: its route record and how it answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from envcache.service.daemon import DAEMON, Daemon


@dataclass(frozen=True)
class Route:
    """One endpoint: how it is mounted, and what the OpenAPI document says about it."""

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    body: Any = None
    responses: dict[str, Any] = field(default_factory=dict)
    params: list[dict[str, Any]] = field(default_factory=list)

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"responses": self.responses, "params": self.params}
        if self.body is not None:
            spec["body"] = self.body
        return spec


def daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON]


def json_response(data: Any, status: int = 200) -> web.Response:
    """A response model (or plain data) as JSON."""
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")
