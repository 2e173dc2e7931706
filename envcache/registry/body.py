"""Reading a request body as it arrives: to its end, within a size limit, and never waiting
forever for a client that stopped sending.

WHY here: aiohttp bounds neither. ``content.read(n)`` returns whatever the first network read
brought (a body sent in several TCP segments was cut short), and nothing times out a client
that sends half a body and then goes quiet — it holds its connection, an upload's open file,
and a slot of the connection cap for as long as it likes. Every handler that reads a body (blob
uploads, manifests, the JSON API) reads it through here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from envcache.errors import InvalidInput

#: Seconds a body may go without a single byte before the request is answered 408 (the
#: composition root sets the daemon's ``[server] body_timeout``).
BODY_TIMEOUT = web.AppKey("envcache_body_timeout", float)
DEFAULT_BODY_TIMEOUT = 60.0


class BodyTimeout(InvalidInput):
    """The client stopped sending its body."""

    http_status = 408


class BodyTooLarge(InvalidInput):
    """A body over the endpoint's limit (with a Content-Length, or chunked)."""

    http_status = 413


async def chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; :class:`BodyTimeout` when none comes in time."""
    idle = request.app.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT)
    stream = request.content
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await stream.readany()
        except TimeoutError:
            raise BodyTimeout(f"no request body data for {idle:g} seconds; the request was abandoned") from None
        if not chunk:
            return
        yield chunk


async def read_limited(request: web.Request, limit: int,
                       too_large: Callable[[int], Exception] | None = None) -> bytes:
    """The whole body; ``too_large(size)`` (default :class:`BodyTooLarge`) is raised as soon as
    the declared length or the bytes received pass ``limit``."""
    refuse = too_large or (lambda size: BodyTooLarge(
        f"request body of {size} bytes or more is over the {limit}-byte limit"))
    if request.content_length is not None and request.content_length > limit:
        raise refuse(request.content_length)
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks(request):
        total += len(chunk)
        if total > limit:
            raise refuse(total)
        parts.append(chunk)
    return b"".join(parts)
