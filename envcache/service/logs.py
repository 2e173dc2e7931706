"""The daemon's log: one line per request (the access log) and the daemon's own messages, as
JSON lines or text, to stderr or a file (``[log]`` in the config, ``serve --log-format``).

Every request gets an id: the client's ``X-Request-Id`` when it is a sane token, else a new one.
It is answered in the ``X-Request-Id`` header, written in the request's access line, and carried
(a context variable) into everything the request's task logs — including a build it starts,
whose task inherits the context — so one id ties a client's call, the daemon's messages and the
build log together.

The access line names the token by its configured ``name`` (``token-<n>`` by default), never the
token itself. aiohttp's own access-log hook (``AbstractAccessLogger``) writes it, after the
response is sent, so the byte count and duration are final.

Warnings and errors are rate-limited per kind (:class:`RepeatFilter`): one misbehaving client,
or a resource running out (file descriptors, disk), repeats the same error thousands of times a
second — the campaign of issue 13 saw the log grow 63 MB in 30 s of "Too many open files"
tracebacks. What an operator needs is the first one, with its traceback, and how often it recurred.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.handlers
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

if TYPE_CHECKING:
    from envcache.service.config import LogConfig

HEADER = "X-Request-Id"
ACCESS_LOGGER = "envcache.access"
#: A client-supplied id is kept only when it is a plain token (no spaces, quotes or control bytes).
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}")
_ID_KEY = web.RequestKey("envcache_request_id", str)
_TOKEN_KEY = web.RequestKey("envcache_token_name", str)
#: The request being handled by the current task (and by tasks it starts, such as a build).
current_request: contextvars.ContextVar[str | None] = contextvars.ContextVar("envcache_request_id", default=None)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id(request: web.BaseRequest) -> str:
    """The request's id, the same for the whole request (chosen on first use)."""
    found = request.get(_ID_KEY)
    if found is None:
        given = request.headers.get(HEADER, "")
        found = given if _SANE_ID.fullmatch(given) else secrets.token_hex(8)
        request[_ID_KEY] = found
    return found


def set_token_name(request: web.Request, name: str) -> None:
    """Auth records which token (by name) the request presented, for its access line."""
    request[_TOKEN_KEY] = name


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: the request's id is current while its handler (and what it starts) runs."""
    reset = current_request.set(request_id(request))
    try:
        return await handler(request)
    finally:
        current_request.reset(reset)


async def answer_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer carries the id, errors and streamed answers included."""
    response.headers[HEADER] = request_id(request)


class AccessLogger(AbstractAccessLogger):
    """One record per request; the handler's formatter turns it into a JSON or text line."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        fields = {
            "request_id": request_id(request),
            "method": request.method,
            "path": request.raw_path[:2048],
            "status": response.status,
            "bytes": _body_bytes(request, response),
            "duration_ms": round(time * 1000, 3),
            "client": request.remote,
            "token": request.get(_TOKEN_KEY),
        }
        self.logger.info("%s %s %s", request.method, fields["path"], response.status, extra={"access": fields})

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def _body_bytes(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """The body's length as announced (Content-Length: blobs sent with sendfile, ranges, JSON), or
    for a streamed answer (a build log, chunked) the bytes written; a HEAD answer sends none."""
    if request.method == "HEAD":
        return 0
    length = response.content_length
    return length if length is not None else response.body_length


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: access fields for requests, else level, logger and message."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"time": _timestamp(record.created)}
        access = getattr(record, "access", None)
        if access is not None:
            data.update(access)
        else:
            data.update(level=record.levelname.lower(), logger=record.name, message=record.getMessage())
            if getattr(record, "request_id", None):
                data["request_id"] = record.request_id
            if record.exc_info:
                data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For people reading a terminal: ``TIME CLIENT ID "METHOD PATH" STATUS BYTES MS TOKEN``."""

    def format(self, record: logging.LogRecord) -> str:
        when = _timestamp(record.created)
        access = getattr(record, "access", None)
        if access is not None:
            return (f'{when} {access["client"]} {access["request_id"]} "{access["method"]} {access["path"]}" '
                    f'{access["status"]} {access["bytes"]}B {access["duration_ms"]:.1f}ms {access["token"] or "-"}')
        request = f" [{record.request_id}]" if getattr(record, "request_id", None) else ""
        line = f"{when} {record.levelname} {record.name}{request}: {record.getMessage()}"
        return line + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


class RepeatFilter(logging.Filter):
    """Lets one record of each kind through per ``window`` seconds; the next one let through says
    how many were held back. A kind is the logger, the level, the message's first line (before
    arguments) and the exception type. Only warnings and errors are limited."""

    def __init__(self, window: float = 60.0, max_kinds: int = 1024) -> None:
        super().__init__()
        self.window = window
        self.max_kinds = max_kinds
        self._kinds: dict[tuple[Any, ...], list[float]] = {}  # kind → [window start, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True  # the access log and info messages are one per event by design
        exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        kind = (record.name, record.levelno, str(record.msg).split("\n", 1)[0][:200], exc_type)
        now = time.monotonic()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return False
        if len(self._kinds) >= self.max_kinds:
            self._kinds.clear()
        self._kinds[kind] = [now, 0]
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} [{int(seen[1])} more like this in the last {self.window:g}s were not logged]"
        return True


class _RequestIdFilter(logging.Filter):
    """Stamps each record with the request its task is serving, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request.get()
        return True


def configure(settings: LogConfig) -> logging.Logger:
    """Send every log record (envcache's, aiohttp's) through one handler in the chosen format;
    returns the access logger to hand to aiohttp's runner."""
    handler: logging.Handler
    if settings.file:
        # Reopened when logrotate moves the file away.
        handler = logging.handlers.WatchedFileHandler(settings.file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    return logging.getLogger(ACCESS_LOGGER)
