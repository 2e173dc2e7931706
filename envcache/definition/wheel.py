"""Wheels as a definition names them: a wheel file's identity, and a requirement pinned to one.

A private wheel enters a definition as a direct reference that pins its bytes:
``tinypkg @ http://127.0.0.1:5050/api/v1/wheels/files/<hex>/tinypkg-1.0-py3-none-any.whl#sha256=<hex>``.
pip checks a ``#sha256=`` fragment against what it downloads, so such a requirement installs
exactly one file, wherever it is served from: the canonical form keeps the file name and the
digest and drops the location (:func:`pinned_wheel`, README "Canonical rules"). The same wheel
uploaded to two daemons, or fetched from a mirror, is then the same environment.

:func:`inspect_wheel` is what a daemon checks before it accepts a wheel: the file name per the
wheel spec (``packaging.utils.parse_wheel_filename``), a zip with one ``.dist-info`` directory
holding ``METADATA``, ``WHEEL`` and ``RECORD``, and ``METADATA`` (``packaging.metadata``) naming
the same project and version as the file name.
"""

from __future__ import annotations

import posixpath
import re
import zipfile
import zlib
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.metadata import Metadata
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion

from envcache.errors import InvalidInput

_SHA256_FRAGMENT = re.compile(r"sha256=([0-9a-f]{64})")
# Where a pinned wheel may be fetched from. No scheme is a location too (the canonical spelling
# has none, and must read back as itself); VCS URLs (``git+https``) are never wheels.
_SCHEMES = ("", "http", "https", "file")
# A dist-info file larger than this is not metadata (and reading it whole could exhaust memory).
_MAX_METADATA = 8 * 1024 * 1024


@dataclass(frozen=True)
class PinnedWheel:
    """A wheel a requirement pins by its sha256: the project (PEP 503 name), the file name as
    written in the URL, and the hex digest."""

    name: str
    filename: str
    sha256: str

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"

    @property
    def canonical_url(self) -> str:
        """The wheel's place in the canonical form: its file and digest, no location."""
        return f"{self.filename}#sha256={self.sha256}"


def pinned_wheel(url: str, name: str | None = None) -> PinnedWheel | None:
    """The wheel ``url`` pins, or None when it pins none.

    It pins one when its last path segment is a valid wheel file name (of project ``name``,
    when given), its fragment is exactly ``sha256=<64 lower-case hex digits>`` (pip compares
    the hex it computes, in lower case) and its scheme is http(s), file or none.
    """
    try:
        split = urlsplit(url.strip())
    except ValueError:
        return None
    found = _SHA256_FRAGMENT.fullmatch(split.fragment)
    if found is None or split.scheme.lower() not in _SCHEMES:
        return None
    filename = unquote(posixpath.basename(split.path))  # pip unquotes a link's file name too
    try:
        project = parse_wheel_filename(filename)[0]
    except (InvalidWheelFilename, InvalidVersion):
        return None
    if name is not None and canonicalize_name(name) != project:
        return None
    return PinnedWheel(project, filename, found[1])


@dataclass(frozen=True)
class WheelInfo:
    """What a wheel file says about itself, checked against its file name."""

    filename: str
    name: str                      # PEP 503 normalised
    version: str                   # PEP 440 normal form
    tags: tuple[str, ...]          # sorted, e.g. ("py3-none-any",)
    requires_python: str | None
    summary: str | None


def inspect_wheel(path: Path, filename: str) -> WheelInfo:
    """Check that ``path`` is a wheel whose file name is ``filename``; InvalidInput says why not."""
    if "/" in filename or "\\" in filename or not filename.endswith(".whl"):
        raise InvalidInput(f"{filename[:120]!r} is not a wheel file name (name-version[-build]-python-abi-"
                           "platform.whl)")
    try:
        name, version, _build, tags = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise InvalidInput(f"{filename[:120]!r} is not a wheel file name: {exc}") from None
    try:
        with zipfile.ZipFile(path) as archive:
            meta_text, wheel_text = _dist_info(archive, filename)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, zlib.error) as exc:
        raise InvalidInput(f"{filename}: not a wheel (not a readable zip archive: {exc})") from None
    try:
        metadata = Metadata.from_email(meta_text, validate=True)
    except ExceptionGroup as group:
        problems = "; ".join(str(exc) for exc in group.exceptions)
        raise InvalidInput(f"{filename}: invalid METADATA: {problems}") from None
    if canonicalize_name(metadata.name) != name or metadata.version != version:
        raise InvalidInput(f"{filename}: METADATA says {metadata.name} {metadata.version}, the file name says "
                           f"{name} {version}")
    wheel_version = HeaderParser().parsestr(wheel_text).get("Wheel-Version", "")
    if not re.fullmatch(r"1\.\d+", wheel_version.strip()):
        raise InvalidInput(f"{filename}: WHEEL has Wheel-Version {wheel_version.strip()!r}; only 1.x wheels install")
    return WheelInfo(filename, name, str(version), tuple(sorted(str(tag) for tag in tags)),
                     str(metadata.requires_python) if metadata.requires_python else None, metadata.summary)


def _dist_info(archive: zipfile.ZipFile, filename: str) -> tuple[str, str]:
    """(METADATA, WHEEL) of the archive's one ``.dist-info`` directory, which must also hold RECORD."""
    names = set(archive.namelist())
    directories = sorted({n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")})
    if len(directories) != 1:
        found = ", ".join(directories) or "none"
        raise InvalidInput(f"{filename}: a wheel has exactly one top-level .dist-info directory (found: {found})")
    directory = directories[0]
    missing = [f for f in ("METADATA", "WHEEL", "RECORD") if f"{directory}/{f}" not in names]
    if missing:
        raise InvalidInput(f"{filename}: {directory} lacks {', '.join(missing)}")
    texts = []
    for part in ("METADATA", "WHEEL"):
        info = archive.getinfo(f"{directory}/{part}")
        if info.file_size > _MAX_METADATA:
            raise InvalidInput(f"{filename}: {directory}/{part} is {info.file_size} bytes; that is no metadata")
        try:
            texts.append(archive.read(info).decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"{filename}: {directory}/{part} is not UTF-8 text") from None
    return texts[0], texts[1]

