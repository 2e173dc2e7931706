"""From an HTTP request to what the handlers work with: a capped body, a validated model, a
Definition (parsed once per distinct body), a variant, a positive integer.

Kept out of the views so the views stay thin (datasette's model): a handler reads its model,
calls the daemon's parts and answers.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import xxhash
from aiohttp import web

from envcache.definition import definition_from_dict, load_definition
from envcache.definition.sources import check_yaml_aliases
from envcache.definition.variants import resolve_variant
from envcache.errors import EnvcacheError, InvalidInput
from envcache.registry.body import read_limited
from envcache.service.offload import LARGE_BODY, Offload
from envcache.service.schemas import MAX_INTEGER, UNSET, Request, Subject, convert
from envcache.wire import check_files

if TYPE_CHECKING:
    from envcache.definition.model import Definition
    from envcache.service.environments import Environments

MAX_BODY = 1024 * 1024  # one definition, or a warm list of a few hundred
M = TypeVar("M", bound=Request)


async def raw_body(request: web.Request) -> bytes:
    """The whole request body, however many reads it arrives in; 413 past :data:`MAX_BODY`."""
    return await read_limited(request, MAX_BODY)


def json_object(raw: bytes) -> dict[str, Any]:
    """A body's JSON object (an empty body is ``{}``)."""
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    if (b"\\ud" in raw or b"\\uD" in raw) and _has_lone_surrogate(data):
        # JSON may spell half a UTF-16 pair (\ud800); such a string cannot be written to a file,
        # a database or a log line later, so it is refused here, where the caller can still be told.
        raise InvalidInput("request body contains a lone UTF-16 surrogate (\\ud800-\\udfff): not valid Unicode text")
    return data


def _has_lone_surrogate(data: Any) -> bool:
    """True if a string in ``data`` holds half a UTF-16 pair, which UTF-8 cannot encode.

    Data nested too deeply raises RecursionError here, answered as a 400 by the error middleware.
    """
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


async def read(request: web.Request, model: type[M]) -> tuple[M, bytes]:
    """The body as ``model`` (validated), and its raw bytes."""
    raw = await raw_body(request)
    return convert(json_object(raw), model), raw


def sends_files(request: web.Request) -> bool:
    """Is the body the definition's own files (``?path=NAME``, or multipart) rather than the API's JSON?"""
    return "path" in request.query or request.content_type == "multipart/form-data"


async def files_read(request: web.Request, model: type[M]) -> tuple[M, bytes]:
    """A request whose body is the definition's own files (README, "The fast hit path"): the
    same model as :func:`read` gives for a JSON body, and a memo key.

    The body is one file, named by ``?path=NAME`` (the name decides the format unless ``?format=``
    says) — or, as ``multipart/form-data``, several: each part's field name is the file's
    relative path, the first part is the definition. ``?variant=`` as in JSON. So
    ``curl --data-binary @env.yml '…?path=env.yml'`` and ``curl -F env.yml=@env.yml -F
    base.txt=@base.txt …`` both work, with no JSON quoting in a shell script.
    """
    query = request.query
    files: dict[str, str] = {}
    if request.content_type == "multipart/form-data":
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
        for name, part in (await request.post()).items():
            data = part.file.read() if isinstance(part, web.FileField) else str(part).encode()
            files[name] = _text(data, name)
        if not files:
            raise InvalidInput("multipart body has no parts: send each file as NAME=@FILE")
        path = next(iter(files))
        if sum(len(text) for text in files.values()) > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=sum(map(len, files.values())))
    else:
        path = query["path"]
        files[path] = _text(await raw_body(request), path)
    data = {"document": {"path": path, "files": files, "format": query.get("format")}}
    if "variant" in query:
        data["variant"] = query["variant"]
    key = json.dumps(data, sort_keys=True).encode()
    return convert(data, model), key


def _text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{name[:80]}: not UTF-8 text") from None


def positive_int(value: Any, field: str) -> int | None:
    """A positive integer from its digits (a query string, a version sent as text); ASCII digits
    only (``"²".isdigit()`` is True)."""
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,19}", value) or not 1 <= int(value) <= MAX_INTEGER:
        raise InvalidInput(f"{field} must be a positive integer (at most {MAX_INTEGER})")
    return int(value)


def variant(value: str | None) -> str:
    """``cpu``/``gpu`` as asked; ``auto`` (or nothing) → this host's variant."""
    return resolve_variant(value or "auto")


class Definitions:
    """Turns a request's subject into a Definition, remembering recently parsed bodies.

    WHY the memo: build tools ask about the same few definitions over and over; parsing,
    validating and (for raw files) loading them again is most of a hit's server time. Only
    bodies that name their definition inline are kept (an ``environment`` reference can move to
    a new version). A memoised Definition is never mutated (``for_variant`` copies it), and
    every hit still canonicalises it and compares the stored canonical bytes, so the memo cannot
    hand out a wrong image.
    """

    def __init__(self, environments: Environments, offload: Offload, size: int = 256) -> None:
        self._environments = environments
        self._offload = offload
        self._size = size
        self._items: OrderedDict[bytes, Definition] = OrderedDict()

    async def of_body(self, subject: Subject, raw: bytes) -> tuple[Definition, tuple[str, int] | None]:
        """The request's Definition (and the environment it names, if it names one)."""
        if subject.definition is UNSET and subject.document is UNSET:
            return await self.of(subject)
        digest = xxhash.xxh3_128_digest(raw)
        found = self._items.get(digest)
        if found is None:
            found, _ = await self.of(subject, large=len(raw) >= LARGE_BODY)
            self._items[digest] = found
            if len(self._items) > self._size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(digest)
        return found, None

    async def of(self, subject: Subject, where: str = "", *,
                 large: bool = False) -> tuple[Definition, tuple[str, int] | None]:
        """A Definition from ``definition`` (a document), ``document`` (raw files) or ``environment``;
        ``large`` (the request body is): parsed off the event loop (:mod:`envcache.service.offload`)."""
        try:
            return await self._of(subject, where, large)
        except RecursionError:  # deeply nested JSON/YAML inside a file or the definition: bad input
            raise InvalidInput(f"{where}definition is nested too deeply") from None

    async def _of(self, subject: Subject, where: str, large: bool) -> tuple[Definition, tuple[str, int] | None]:
        if subject.document is not UNSET and subject.definition is UNSET:
            return await self._offload.maybe(large, load_files, subject.document, where), None
        if subject.definition is not UNSET:
            try:
                source = f"<api>{'/' + where.rstrip(': ') if where else ''}"
                return await self._offload.maybe(large, definition_from_dict, subject.definition, source), None
            except EnvcacheError:
                raise
            except (TypeError, ValueError, KeyError, AttributeError) as exc:  # belt and braces: bad input is a 400
                raise InvalidInput(f"{where}invalid definition: {exc}") from None
        if subject.environment is not UNSET:
            version = subject.environment.version
            if isinstance(version, str):
                version = positive_int(version, f"{where}environment.version")
            record = await self._environments.get(subject.environment.name, version)
            return record.as_definition(), (record.name, record.version)
        raise InvalidInput(f"{where}give either 'definition' (a definition document), 'document' (its raw files) "
                           "or 'environment' ({name, version})")


def load_files(item: Any, where: str) -> Definition:
    """A Definition from raw files (``document``), loaded by the same loaders as a local file.

    The files go into a private temporary directory (after :func:`check_files` has made sure
    nothing they include points outside it); messages name them as the client does.
    """
    if isinstance(item, dict) and isinstance(item.get("files"), dict):
        for name, text in item["files"].items():
            if isinstance(text, str):
                check_yaml_aliases(f"{where}document.files[{name[:80]!r}]", text)
    document = check_files(item)
    with tempfile.TemporaryDirectory(prefix="envcache-document-") as tmp:
        for name, text in document.files.items():
            target = Path(tmp, name)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
            except OSError as exc:  # a name too long for the file system, a file where a directory goes
                raise InvalidInput(f"{where}document.files[{name[:80]!r}]: cannot be written as a file: "
                                   f"{exc.strerror or exc}") from None
        try:
            return load_definition(Path(tmp, document.path), document.format)
        except EnvcacheError as exc:
            message = exc.message
        except (TypeError, ValueError, KeyError, AttributeError) as exc:  # belt and braces: bad input is a 400
            message = f"invalid definition: {exc}"
    shown = document.display_root
    message = message.replace(tmp + "/", shown.rstrip("/") + "/" if shown else "").replace(tmp, shown or ".")
    raise InvalidInput(f"{where}{message}")
