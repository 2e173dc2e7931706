"""What the client and the daemon both speak: the raw-files document, the API's error shape and
where the daemon is by default.

The client imports this module (standard library only at import time) and nothing of the
daemon; the daemon imports it instead of the client. Both sides of every rule that must agree
live here.

A definition sent as its raw files, so the daemon loads it and the client parses nothing.

WHY: on a cache hit the whole ``envcache resolve`` process is the latency a build script sees.
Loading a definition locally imports PyYAML, packaging, pip-requirements-parser and the canonical
rules — several times the cost of the interpreter itself — while the daemon already has them
imported and memoised. So the client reads the definition's files (standard library only) and
sends ``{"path", "format", "files", "display_root"}``; the daemon writes them into a private
directory and runs the very same ``load_definition`` there, so the key cannot differ.

Correctness rests on sending every file the loaders will read. That closure is known cheaply
for single files and Azure directories; ``-r``/``-c`` includes are followed only when each one
sits alone on a line in a form the loaders read exactly that way. Anything else — an include
in an unusual form, a URL, an absolute path, non-UTF-8 text, a huge file — makes
:meth:`DefinitionFiles.from_path` return ``None`` and the caller loads the definition locally
as before. The daemon applies the same scan (:func:`check_files`) before touching a file, so a
crafted document cannot make it read anything outside the files it was sent.

Both sides live here because they must agree: the daemon refuses exactly the includes the
client would never send, and both rest on :func:`scan_includes`. The client side uses the
standard library only; the daemon side imports YAML and the conda loader's rules when it runs.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from pathlib import Path

from envcache.errors import InvalidInput

TYPE_CHECKING = False  # typing is not imported at run time: README, "The fast hit path"
if TYPE_CHECKING:
    from typing import Any

ENV_JSON = "azureml_environment.json"   # as envcache.definition.azure (not imported: it pulls in YAML)
CONDA_YML = "conda_dependencies.yml"
DOCKERFILE = "BaseDockerfile"
VARIANTS_YML = "envcache_variants.yml"
MAX_FILES = 64
MAX_CHARS = 512 * 1024                  # well under the API's body cap, JSON escaping included

DEFAULT_URL = "http://127.0.0.1:5050"
#: The API's ``variant`` values, for the client side (the daemon's own are
#: ``envcache.definition.variants.CHOICES``; a test keeps the two equal).
VARIANT_CHOICES = ("cpu", "gpu", "auto")

#: Pipeline step results, as OCI artifacts tagged with their step key (README "Pipeline steps").
STEP_REPOSITORY = "envcache/step"
#: Where a submission's source and input files are uploaded as blobs before it runs.
STEP_FILES_REPOSITORY = "envcache/step-files"

#: The document's JSON Schema (for the daemon's OpenAPI document; :func:`check_files` enforces it).
DOCUMENT_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["path", "files"],
    "description": "a definition's raw files in any input format, loaded by the daemon",
    "properties": {
        "path": {"type": "string", "description": "relative file or Azure ML directory"},
        "format": {"type": ["string", "null"], "description": "as --format; null detects it"},
        "files": {"type": "object", "additionalProperties": {"type": "string"},
                  "description": "relative name → text; includes must stay inside"},
        "display_root": {"type": "string", "description": "how error messages show the path"},
    },
}


def daemon_url(url: str | None = None) -> str:
    """``url``, else ``$ENVCACHE_URL``, else the default loopback address."""
    return (url or os.environ.get("ENVCACHE_URL") or DEFAULT_URL).rstrip("/")


def error_body(status: int, message: str) -> dict[str, Any]:
    """The API's error document: ``{"error": {"status", "message"}}`` (4xx and 5xx alike)."""
    return {"error": {"status": status, "message": message}}


def error_message(body: bytes) -> tuple[str, dict[str, Any]] | None:
    """(message, whole document) of an API error answer, or None when it is not one."""
    try:
        data = json.loads(body)
        return data["error"]["message"], data
    except (ValueError, KeyError, TypeError):
        return None

# An include that sits alone on its line, in the two places loaders follow them:
# a requirements file (``-r base.txt``, ``--constraint=c.txt``; relative to that file) and the
# ``pip:`` list of a conda file (``- -r base.txt``; relative to the conda file's directory, or
# the Azure directory). The target may not contain quotes, spaces or ``#``.
# (Kept as strings for ``re``'s own cache: most definitions have no include, so compiling them at
# import would only slow the CLI down.)
_REQUIREMENTS_LINE = r"^\s*(?:-r|--requirement|-c|--constraint)(?:\s*=\s*|\s+)([^\s#\"']+)\s*(?:\s#.*)?$"
_CONDA_LINE = r"^\s*-\s+([\"']?)(?:-r|--requirement)(?:\s+|=)([^\s#\"']+)\1\s*(?:#.*)?$"
_TOKENS = r"[\s\"'\[\](){},]+"


def _include_like(token: str) -> bool:
    """Could pip's option parser read ``token`` as -r/-c (short, combined, or an abbreviated long option)?"""
    if token.startswith("--"):
        name = token.split("=", 1)[0]
        return len(name) >= 4 and ("--requirement".startswith(name) or "--constraint".startswith(name))
    return len(token) >= 2 and token[0] == "-" and token[1] in "rc"


class Unfollowable(Exception):
    """An include we cannot follow safely here (the caller loads locally, the daemon refuses)."""


class Include:
    """One ``-r``/``-c`` include: its line, its target, and whether it sits in a conda ``pip:`` list.

    A plain class rather than a NamedTuple: ``typing`` costs the CLI's hit a sixth of its time."""

    __slots__ = ("line", "target", "conda_style")

    def __init__(self, line: int, target: str, conda_style: bool) -> None:
        self.line, self.target, self.conda_style = line, target, conda_style


def scan_includes(text: str) -> list[Include]:
    """Every include in ``text``; raises :class:`Unfollowable` if one is not in a form we follow.

    Over-approximates on purpose: a matching line in a file no loader treats as requirements
    only makes the client send one file more; an include-like token anywhere else means we
    cannot be sure, so nothing is guessed.
    """
    found: list[Include] = []
    if "-r" not in text and "-c" not in text and "\\" not in text:
        return found  # every include-like token contains one of these (the common case: no regex)
    for number, line in _lines(text):
        if line.lstrip().startswith("#"):
            continue  # a comment to pip and to YAML alike
        tokens = [t for t in re.split(_TOKENS, line) if _include_like(t)]
        if not tokens:
            continue
        match = re.match(_REQUIREMENTS_LINE, line)
        conda = re.match(_CONDA_LINE, line) if match is None else None
        target = match.group(1) if match else conda.group(2) if conda else None
        if target is None or len(tokens) != 1 or ":" in target or target.startswith(("/", "~", "\\")):
            raise Unfollowable(f"line {number}: {line.strip()[:120]!r}")
        found.append(Include(number, target, conda is not None))
    return found


def _lines(text: str) -> list[tuple[int, str]]:
    """(number, line) of every line, plus each run of ``\\``-continued lines joined as pip joins them.

    pip reads ``-\\`` + ``r base.txt`` as ``-r base.txt``; scanning both forms misses neither.
    """
    lines = text.splitlines()
    numbered = list(enumerate(lines, start=1))
    if "\\" not in text:
        return numbered
    joined: list[str] = []
    start = 0
    for number, line in numbered:
        if line.endswith("\\") and not line.lstrip().startswith("#"):
            start = start if joined else number
            joined.append(line.strip("\\"))
        elif joined:
            numbered.append((start, "".join([*joined, line])))
            joined = []
    if joined:
        numbered.append((start, "".join(joined)))
    return numbered


class DefinitionFiles:
    """A definition as its files: ``path`` (a file or Azure directory) relative to the files' root.

    ``display_root`` is how error messages show that root: as the user named the path.
    """

    def __init__(self, path: str, files: dict[str, str], format: str | None = None,  # noqa: A002
                 display_root: str = "") -> None:
        self.path, self.files, self.format, self.display_root = path, files, format, display_root

    def __repr__(self) -> str:
        return f"DefinitionFiles(path={self.path!r}, files={sorted(self.files)!r}, format={self.format!r})"

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "files": self.files, "display_root": self.display_root}

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], format: str | None = None) -> DefinitionFiles | None:  # noqa: A002
        """The files of the definition at ``path``, or None when they must be loaded locally."""
        try:
            return _Collector(Path(path), format).collect()
        except (Unfollowable, OSError, ValueError):  # UnicodeDecodeError is a ValueError
            return None


class _Collector:
    def __init__(self, path: Path, fmt: str | None) -> None:
        self.given = path
        self.format = fmt
        self.read: dict[str, tuple[str, str]] = {}  # lexical absolute path → (text, physical path read)
        self.chars = 0

    def collect(self) -> DefinitionFiles | None:
        path = self.given
        if path.is_dir() or path.name == ENV_JSON:
            if self.format not in (None, "azure-dir"):
                return None  # the loader's own error says it needs a file
            directory = path if path.is_dir() else path.parent
            self._azure(directory)
            main = _lexical(path)
        elif path.is_file():
            main = _lexical(path)
            self._add(str(path), main, _lexical(path.parent))
        else:
            return None  # missing: the local loader names it
        if not self.read:
            return None  # e.g. a directory that is no Azure environment: the local loader says so
        # The root holds every file and names the main path by its last part at least, as the
        # loaders' messages do (``env.yml: line 3``, ``myenv/azureml_environment.json``).
        root = os.path.commonpath([os.path.dirname(p) for p in [main, *self.read]])
        files = {posixpath.join(*Path(os.path.relpath(p, root)).parts): text for p, (text, _) in self.read.items()}
        shown = root if path.is_absolute() else os.path.relpath(root)
        return DefinitionFiles(path=Path(os.path.relpath(main, root)).as_posix(), files=files, format=self.format,
                               display_root="" if shown == "." else shown)

    def _azure(self, directory: Path) -> None:
        base = _lexical(directory)
        json_file = directory / ENV_JSON
        if not json_file.is_file():
            return  # the loader reports the missing file
        self._add(str(json_file), os.path.join(base, ENV_JSON), base)
        deps_file = _conda_file_named(self.read[os.path.join(base, ENV_JSON)][0])
        if deps_file is None:
            return  # invalid JSON or shape: the loader stops there, no other file is read
        if not isinstance(deps_file, str) or _unsafe(deps_file):
            raise Unfollowable(f"condaDependenciesFile {deps_file!r}")
        for name in (deps_file, DOCKERFILE, VARIANTS_YML):
            if (directory / name).is_file():
                self._add(str(directory / name), _lexical(directory / name), base)

    def _add(self, physical: str, lexical: str, conda_base: str) -> None:
        """Read one file and, recursively, the includes it names that exist."""
        if lexical in self.read:
            if self.read[lexical][1] != os.path.realpath(physical):
                raise Unfollowable(f"{lexical} names two different files")  # symlinked directories
            return
        if len(self.read) >= MAX_FILES:
            raise Unfollowable("too many files")
        with open(physical, encoding="utf-8", newline="") as handle:
            text = handle.read()
        self.chars += len(text)
        if self.chars > MAX_CHARS:
            raise Unfollowable("too large")
        self.read[lexical] = (text, os.path.realpath(physical))
        for include in scan_includes(text):
            # Loaders join the target to the including file's directory (requirements) or to the
            # conda file's base directory; send whichever exists — a missing one errors alike.
            bases = [(os.path.dirname(physical), os.path.dirname(lexical))]
            if include.conda_style:
                bases.append((conda_base, conda_base))
            for phys_dir, lex_dir in bases:
                candidate = os.path.join(phys_dir, include.target)
                if os.path.isfile(candidate):
                    self._add(candidate, os.path.normpath(os.path.join(lex_dir, include.target)), conda_base)


def _conda_file_named(azure_json: str) -> object:
    """What the Azure JSON names as its conda file (not checked yet), or None if the loader
    would stop at the JSON itself."""
    try:
        python = json.loads(azure_json).get("python") or {}
        return python.get("condaDependenciesFile") or CONDA_YML
    except (ValueError, AttributeError):
        return None


def _lexical(path: Path) -> str:
    return os.path.normpath(os.path.abspath(path))


def _unsafe(relative: str) -> bool:
    return (not relative or "\x00" in relative or ":" in relative or relative.startswith(("/", "~", "\\"))
            or posixpath.normpath(relative).startswith("../") or posixpath.normpath(relative) == "..")


def check_files(document: Any) -> DefinitionFiles:
    """Validate a ``document`` sent to the daemon: plain relative names, includes that stay inside.

    Raises InvalidInput (HTTP 400) naming the offending field or file and line.
    """
    if not isinstance(document, dict):
        raise InvalidInput("document must be an object with path, files and optional format")
    unknown = set(document) - {"path", "format", "files", "display_root"}
    if unknown:
        raise InvalidInput(f"document: unknown field {sorted(unknown)[0]!r}; valid fields: path, format, files, display_root")
    path, files, fmt = document.get("path"), document.get("files"), document.get("format")
    shown = document.get("display_root") or ""
    if not isinstance(path, str) or _bad_name(path):
        raise InvalidInput("document.path must be a relative path without '..' (a file or directory in files)")
    if not isinstance(files, dict) or not files or len(files) > MAX_FILES:
        raise InvalidInput(f"document.files must map 1 to {MAX_FILES} relative file names to their text")
    if fmt is not None and not isinstance(fmt, str):
        raise InvalidInput("document.format must be a string or null")
    if not isinstance(shown, str):
        raise InvalidInput("document.display_root must be a string")
    if sum(len(text) for text in files.values() if isinstance(text, str)) > MAX_CHARS:
        # The client never sends more (it loads such a definition itself); the cap bounds the
        # parsing one request can ask for.
        raise InvalidInput(f"document.files hold more than {MAX_CHARS} characters in all")
    names = set(files)
    for name, text in files.items():
        if _bad_name(name) or not isinstance(text, str):
            raise InvalidInput(f"document.files[{name[:80]!r}]: names must be relative paths without '..', "
                               "values the file's text")
        if any(other.startswith(name + "/") for other in names):
            raise InvalidInput(f"document.files[{name[:80]!r}] is both a file and a directory")
        if posixpath.basename(name) == ENV_JSON:
            _check_conda_file(name, text, shown)
        try:
            includes = scan_includes(text)
        except Unfollowable as exc:
            raise InvalidInput(f"{posixpath.join(shown, name)}: {exc}: an include the daemon does not follow "
                               "(send the loaded definition instead)") from None
        directory = posixpath.dirname(name)
        conda_bases = [directory, posixpath.dirname(path) if path in names else path]
        for include in includes:
            if any(_unsafe(posixpath.join(base, include.target)) for base in
                   (conda_bases if include.conda_style else [directory])):
                raise InvalidInput(f"{posixpath.join(shown, name)}: line {include.line}: include "
                                   f"{include.target!r} points outside the files sent")
        # What the text scan cannot see: YAML/JSON escapes that spell ``-r`` in a parsed list entry.
        for target in _listed_includes(_parsed(text)):
            if any(_unsafe(posixpath.join(base, target)) for base in conda_bases):
                raise InvalidInput(f"{posixpath.join(shown, name)}: include {target[:80]!r} points outside "
                                   "the files sent")
    return DefinitionFiles(path=path, files=dict(files), format=fmt, display_root=shown)


def _parsed(text: str) -> Any:
    """The file as JSON or YAML, or None. Daemon side only, where PyYAML is loaded anyway."""
    import yaml

    try:
        return json.loads(text)  # the Azure JSON is read as JSON, which YAML does not always accept
    except ValueError:
        pass
    except RecursionError:
        raise InvalidInput("definition is nested too deeply") from None
    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return None  # the loaders stop at the same error, before reading any include


def _listed_includes(data: Any) -> list[str]:
    """Targets of ``-r`` entries in every list of parsed YAML/JSON, read as the conda loader reads them."""
    from envcache.definition.conda_env import pip_include

    found: list[str] = []
    stack = [data]
    seen: set[int] = set()  # YAML aliases share (even contain) nodes: walk each container once
    while stack:
        item = stack.pop()
        if isinstance(item, (dict, list)):
            if id(item) in seen:
                continue
            seen.add(id(item))
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            for entry in item:
                if not isinstance(entry, str):
                    stack.append(entry)
                elif (target := pip_include(entry)) is not None:
                    found.append(target)
    return found


def _check_conda_file(name: str, text: str, shown: str) -> None:
    """The Azure JSON names its conda file; it must be one of the files sent, not any path."""
    deps_file = _conda_file_named(text)
    if deps_file is None:
        return  # the loader reports the JSON itself, before any other file is read
    if not isinstance(deps_file, str) or _unsafe(posixpath.join(posixpath.dirname(name), deps_file)):
        raise InvalidInput(f"{posixpath.join(shown, name)}: python.condaDependenciesFile {str(deps_file)[:80]!r} "
                           "must be a relative path inside the environment directory")


def _bad_name(name: str) -> bool:
    parts = name.split("/")
    return (not name or "\x00" in name or "\\" in name or name.startswith("/")
            or any(part in ("", ".", "..") for part in parts) or len(name) > 1024)
