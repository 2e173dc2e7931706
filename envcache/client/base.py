"""What the sync and async clients share: where the daemon is, how calls map onto the API.

Each API call is written once, in :class:`Endpoints`, as ``return self._request(...)``: in the
sync client that is the answer, in the async client an awaitable of it. So the two clients
cannot drift apart, and each transport is only a ``_request`` and a ``_lines`` implementation.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from envcache.errors import Conflict, EnvcacheError, InvalidInput, NotFound
from envcache.wire import DefinitionFiles, error_message

TYPE_CHECKING = False  # typing is not imported at run time: README, "The fast hit path"
if TYPE_CHECKING:  # nor a parser: a cache hit from the CLI must load none
    from pathlib import Path
    from typing import Any, Protocol

    from envcache import definition as spec

    class HasDefinition(Protocol):
        """Anything that can say what it is as envcache's definition document (the Azure-style
        facade's ``Environment`` does). A protocol, so this module imports no facade class."""

        def to_definition_dict(self) -> dict[str, Any]: ...

    class NamedVersion(Protocol):
        """A registered environment named by an object (the facade's ``EnvironmentReference``)."""

        name: str
        version: int | str | None

    # What the calls accept as a definition; a path is sent as its files when it can be.
    DefinitionLike = dict[str, Any] | str | os.PathLike[str] | spec.Definition | HasDefinition | DefinitionFiles
    # ``environment=``: a registered environment's name (latest version), (name, version),
    # {"name", "version"}, an EnvironmentReference — or, as Azure's ``environment=`` takes, an Environment.
    EnvironmentRef = str | tuple[str, int | str | None] | dict[str, Any] | NamedVersion | HasDefinition


class DaemonUnavailable(EnvcacheError):
    """Nothing answers at the daemon's address."""

    exit_code = 1


class RequestFailed(EnvcacheError):
    """The daemon answered with an error it did not classify as bad input or not found."""

    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {}


def unavailable(url: str, reason: object) -> DaemonUnavailable:
    return DaemonUnavailable(
        f"no envcache daemon answers at {url} ({reason}). Start one with `envcache serve`, "
        "or point to it with --url or ENVCACHE_URL"
    )


def error_for(status: int, body: bytes) -> EnvcacheError:
    """The daemon's JSON error as the matching EnvcacheError (400 → InvalidInput, 404 → NotFound,
    409 → Conflict)."""
    found = error_message(body)
    message, data = found if found else (body.decode("utf-8", "replace")[:500] or f"HTTP {status}", {})
    if status in (400, 413):
        return InvalidInput(message)
    if status == 404:
        return NotFound(message)
    if status == 409:
        return Conflict(message)
    return RequestFailed(status, message, data if isinstance(data, dict) else None)


class BuildFailure(EnvcacheError):
    """A build the client waited for failed: ``build id: verdict`` on the first line, then the
    failing step's error lines (pip's, conda's, the Dockerfile step's)."""

    def __init__(self, build: dict[str, Any]) -> None:
        error = build.get("error") or "build failed"
        super().__init__(f"build {build['id']}: {error}")
        self.build = build
        self.verdict = error.splitlines()[0] if error.strip() else error


def is_miss(body: bytes) -> bool:
    """Is a 404 answer a lookup's miss (``"status": "miss"``), rather than something named that
    does not exist (a registered environment, a version)?"""
    found = error_message(body)
    return found is not None and found[1].get("status") == "miss"


def finished(build: dict[str, Any]) -> dict[str, Any]:
    """``ensure_image``'s answer for a build that has ended; raises BuildFailure if it did not succeed."""
    if build["state"] != "succeeded":
        raise BuildFailure(build)
    return {"status": build["outcome"], "image": build["image"], "build": build}


def definition_document(definition: DefinitionLike) -> dict[str, Any]:
    """Accepts what users have at hand: a mapping, a spec Definition, a facade Environment, a path.

    This loads a path locally (every format); :func:`_subject` prefers sending its files.
    """
    if isinstance(definition, dict):
        return definition
    to_definition = getattr(definition, "to_definition_dict", None)  # HasDefinition
    if callable(to_definition):
        return to_definition()
    from envcache import definition as spec

    if isinstance(definition, (str, os.PathLike)):
        definition = spec.load_definition(definition)
    if isinstance(definition, spec.Definition):
        return spec.definition_to_dict(definition)
    raise InvalidInput(f"cannot use a {type(definition).__name__} as a definition: give a dict, a path or a Definition")


def _subject(definition: DefinitionLike | None = None, environment: EnvironmentRef | None = None) -> dict[str, Any]:
    """The request's subject. A path is sent as its raw files when that is safe (the daemon loads
    them; see :mod:`envcache.wire`), so looking it up imports no definition parser here."""
    if environment is not None:
        return _environment_subject(environment)
    if isinstance(definition, (str, os.PathLike)):
        definition = DefinitionFiles.from_path(definition) or definition
    if isinstance(definition, DefinitionFiles):
        return {"document": definition.to_json()}
    return {"definition": definition_document(definition)}


def _environment_subject(environment: EnvironmentRef) -> dict[str, Any]:
    """``environment=`` as Azure's arguments of that name take it, and envcache's shorthands.

    An Environment (anything with ``to_definition_dict``) is sent as its content, as Azure submits
    an environment; the other forms name a registered one. Duck-typed, so this module imports no
    facade class. The daemon checks the version (a whole number, or its digits as a string).
    """
    to_definition = getattr(environment, "to_definition_dict", None)
    if callable(to_definition):
        return {"definition": to_definition()}
    if isinstance(environment, str):
        name, version = environment, None
    elif isinstance(environment, tuple) and len(environment) == 2:
        name, version = environment
    elif isinstance(environment, dict) and "name" in environment and set(environment) <= {"name", "version"}:
        name, version = environment["name"], environment.get("version")
    elif not isinstance(environment, (dict, tuple)) and all(hasattr(environment, a) for a in ("name", "version")):
        name, version = environment.name, environment.version
    else:
        keys = sorted(map(str, environment)) if isinstance(environment, dict) else None
        got = f"a dict with keys {keys}" if keys is not None else repr(environment)
        raise InvalidInput(f"environment: expected a registered environment's name, (name, version), "
                           f"{{'name': …, 'version': …}}, an EnvironmentReference or an Environment; got {got}")
    if not isinstance(name, str):
        raise InvalidInput(f"environment: the name must be a string, got {name!r}")
    return {"environment": {"name": name, "version": version}}


class Endpoints:
    """The API, transport-agnostic. Subclasses implement ``_request`` and ``_lines``."""

    url: str

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 query: dict[str, Any] | None = None, none_on_404: bool = False, upload: Path | None = None) -> Any:
        """One call; ``upload`` sends a file as the body (streamed, ``application/octet-stream``)."""
        raise NotImplementedError

    def health(self) -> Any:
        return self._request("GET", "/api/v1/health")

    def resolve(self, definition: DefinitionLike | None = None, variant: str = "auto", *,
                environment: EnvironmentRef | None = None) -> Any:
        """The cached image document, or None on a miss (never builds); NotFound when a named
        environment or version does not exist."""
        body = {**_subject(definition, environment), "variant": variant}
        return self._request("POST", "/api/v1/resolve", body, none_on_404=True)

    def ensure(self, definition: DefinitionLike | None = None, variant: str = "auto", *, refresh: bool = False,
               wait: bool = False, environment: EnvironmentRef | None = None) -> Any:
        """``{"status": "hit", "image"}`` or ``{"status": "building", "build"}`` (or the result with wait)."""
        body = {**_subject(definition, environment), "variant": variant, "refresh": refresh, "wait": wait}
        return self._request("POST", "/api/v1/ensure", body)

    def build(self, build_id: str) -> Any:
        return self._request("GET", f"/api/v1/builds/{build_id}")

    def build_environment(self, build_id: str) -> Any:
        return self._request("GET", f"/api/v1/builds/{build_id}/environment")

    def images(self, limit: int = 1000) -> Any:
        return self._request("GET", "/api/v1/images", query={"limit": limit})

    def image(self, key: str) -> Any:
        return self._request("GET", f"/api/v1/images/{key}")

    def pin_image(self, key: str, pinned: bool = True) -> Any:
        """Pin (or unpin) a cached image: the daemon's gc never expires or evicts a pinned image."""
        return self._request("PUT" if pinned else "DELETE", f"/api/v1/images/{key}/pin")

    def image_history(self, key: str) -> Any:
        """``{"key", "current": image, "replaced": [...]}``: what refreshes replaced, newest first."""
        return self._request("GET", f"/api/v1/images/{key}/history")

    def register_environment(self, name: str, definition: DefinitionLike) -> Any:
        return self._request("POST", "/api/v1/environments", {"name": name, "definition": definition_document(definition)})

    def environments(self) -> Any:
        return self._request("GET", "/api/v1/environments")

    def environment(self, name: str, version: int | None = None) -> Any:
        return self._request("GET", f"/api/v1/environments/{name}", query={"version": version})

    def environment_versions(self, name: str) -> Any:
        return self._request("GET", f"/api/v1/environments/{name}/versions")

    def download_environment(self, name: str, version: int | None = None) -> Any:
        return self._request("GET", f"/api/v1/environments/{name}/download", query={"version": version})

    def upload_wheel(self, path: str | os.PathLike[str]) -> Any:
        """Upload a wheel file once: ``{"wheel": {…, "requirement"}, "created"}`` (created False
        when the daemon already had these bytes)."""
        from pathlib import Path

        wheel = Path(path)
        if not wheel.is_file():
            raise InvalidInput(f"{wheel}: no such wheel file")
        return self._request("POST", "/api/v1/wheels", query={"filename": wheel.name}, upload=wheel)

    def wheels(self) -> Any:
        return self._request("GET", "/api/v1/wheels")

    def wheel(self, ref: str) -> Any:
        """One wheel (by file name or sha256 digest) and what pins it."""
        return self._request("GET", f"/api/v1/wheels/{quote(ref, safe=':')}")

    def remove_wheel(self, ref: str) -> Any:
        return self._request("DELETE", f"/api/v1/wheels/{quote(ref, safe=':')}")

    def warm(self, items: list[dict[str, Any]], variants: list[str] | None = None, concurrency: int = 4,
             refresh: bool = False) -> Any:
        """``items``: ``{"definition": …, "label": …}`` or ``{"environment": {name, version}}``."""
        return self._request("POST", "/api/v1/warm", self.warm_body(items, variants, concurrency, refresh))

    @staticmethod
    def warm_body(items: list[dict[str, Any]], variants: list[str] | None, concurrency: int,
                  refresh: bool) -> dict[str, Any]:
        return {"items": items, "variants": variants or ["auto"], "concurrency": concurrency, "refresh": refresh}

    def step(self, key: str) -> Any:
        """A stored step result (record, outputs, snapshot listing, log), or None."""
        return self._request("GET", f"/api/v1/steps/{key}", none_on_404=True)


def headers(token: str | None) -> dict[str, str]:
    result = {"Accept": "application/json", "User-Agent": "envcache-client"}
    if token:
        result["Authorization"] = f"Bearer {token}"
    return result


def query_string(query: dict[str, Any] | None) -> str:
    from urllib.parse import urlencode

    pairs = {k: v for k, v in (query or {}).items() if v is not None}
    return f"?{urlencode(pairs)}" if pairs else ""
