"""The canonical form: every way of writing the same environment gives the same bytes.

The rules are DESIGN.md's table (README, "Canonical rules"). Each ``canonical_*`` helper takes
one user-written entry and returns its normal form or raises :class:`ValueError` with a message
for the user; loaders call the same helpers so bad entries are caught at load time with a file,
line or field path, and the canonical form itself never fails on a loaded definition.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import xxhash
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import Specifier
from packaging.utils import canonicalize_name
from packaging.version import Version

from envcache.errors import DefinitionError
from envcache.oci import parse_reference
from envcache.definition.dockerfile import normalise_dockerfile
from envcache.definition.model import Definition, VariantOverride, redact_url_credentials

# Bump whenever a rule below changes what bytes a definition canonicalises to: it is part of the
# hashed bytes, so old hashes can never be confused with new ones.
CANONICAL_VERSION = 1

# --------------------------------------------------------------------------------------- pip


@dataclass
class PipRequirement:
    """A parsed pip entry. Named requirements are merged by (name, url, marker); anything pip
    accepts that is not PEP 508 (VCS URLs, paths, ``-e``) is kept verbatim as ``verbatim``."""

    name: str | None = None
    extras: set[str] = field(default_factory=set)
    specifiers: set[str] = field(default_factory=set)
    url: str | None = None
    marker: str | None = None
    hashes: set[str] = field(default_factory=set)
    verbatim: str | None = None

    @property
    def merge_key(self) -> tuple[str | None, ...]:
        return (self.verbatim, self.name, self.url, self.marker)

    def render(self) -> str:
        if self.verbatim is not None:
            text = self.verbatim
        else:
            text = self.name or ""
            if self.extras:
                text += "[" + ",".join(sorted(self.extras)) + "]"
            if self.url:
                text += " @ " + self.url
            elif self.specifiers:
                text += ",".join(sorted(self.specifiers))
            if self.marker:
                text += ("; " if not self.url else " ; ") + self.marker
        for digest in sorted(self.hashes):
            text += f" --hash={digest}"
        return text


_HASH_OPTION = re.compile(r"\s--hash[=\s]\s*(\S+)")
_NOT_PEP508 = re.compile(r"^(-e\s|--editable[\s=]|[A-Za-z][A-Za-z0-9+.\-]*://|git\+|hg\+|svn\+|bzr\+|\.|/|~)")


# Entries repeat across requests (the daemon sees the same environments all day), and parsing
# dominates hashing cost, so per-entry results are memoised. The parsers are pure functions.
_CACHE_SIZE = 1 << 16


def parse_pip_requirement(entry: str) -> PipRequirement:
    """Parse one pip package entry (a requirements line without options other than ``--hash``)."""
    cached = _parse_pip_requirement(entry)
    # A fresh copy: merging duplicates mutates the sets.
    return replace(cached, extras=set(cached.extras), specifiers=set(cached.specifiers), hashes=set(cached.hashes))


@lru_cache(maxsize=_CACHE_SIZE)
def _parse_pip_requirement(entry: str) -> PipRequirement:
    text = entry.strip()
    if " #" in text:
        text = text.split(" #", 1)[0].rstrip()
    if not text:
        raise ValueError("empty pip requirement")
    hashes = set(_HASH_OPTION.findall(" " + text))
    text = _HASH_OPTION.sub("", " " + text).strip()
    for digest in hashes:
        if ":" not in digest:
            raise ValueError(f"--hash value {digest!r} must be 'algorithm:hexdigest'")
    text = redact_url_credentials(text)
    if _NOT_PEP508.match(text):
        return PipRequirement(verbatim=" ".join(text.split()), hashes=hashes)
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise ValueError(f"invalid pip requirement {entry.strip()!r}: {_first_line(exc)}") from None
    specifiers = {_normalise_specifier(spec) for spec in req.specifier}
    return PipRequirement(
        name=canonicalize_name(req.name),
        extras={canonicalize_name(extra) for extra in req.extras},
        specifiers=specifiers,
        url=req.url.strip() if req.url else None,
        marker=str(req.marker) if req.marker else None,
        hashes=hashes,
    )


def _normalise_specifier(spec: Specifier) -> str:
    """PEP 440 normal form of the version (``2.02`` → ``2.2``); ``===`` compares strings, so
    its operand is kept as written."""
    version = spec.version
    if spec.operator == "===":
        return f"==={version}"
    if version.endswith(".*"):
        return f"{spec.operator}{Version(version[:-2])}.*"
    return f"{spec.operator}{Version(version)}"


def canonical_pip_packages(entries: list[str]) -> list[str]:
    """Parse, merge duplicates (same name, URL and marker: extras, specifiers and hashes are
    united, as pip does) and sort: pip installs a set, the order of lines means nothing."""
    merged: dict[tuple[str | None, ...], PipRequirement] = {}
    for entry in entries:
        req = parse_pip_requirement(entry)
        if req.merge_key in merged:
            seen = merged[req.merge_key]
            seen.extras |= req.extras
            seen.specifiers |= req.specifiers
            seen.hashes |= req.hashes
        else:
            merged[req.merge_key] = req
    return sorted(req.render() for req in merged.values())


def pip_package_name(entry: str) -> str | None:
    """PEP 503 name of a pip entry, or None for verbatim (URL/path) entries."""
    return parse_pip_requirement(entry).name


# Options that describe *where packages come from* or *which ones are allowed*: all change what
# gets installed, so they are content. Includes (-r/-c/-e) are not options of a definition.
_FORBIDDEN_OPTIONS = {"requirements", "constraints", "editables"}


@lru_cache(maxsize=_CACHE_SIZE)
def canonical_pip_option(entry: str) -> str:
    """One pip option in its long form (``-i URL`` → ``--index-url URL``), URL credentials
    stripped. Parsed with pip-requirements-parser's copy of pip's own option table."""
    from pip_requirements_parser import OptionParsingError, build_parser, dumps_global_options

    try:
        argv = shlex.split(entry)
    except ValueError as exc:
        raise ValueError(f"pip option {entry!r}: {exc}") from None
    if not argv or not argv[0].startswith("-"):
        raise ValueError(f"pip option {entry!r} must start with '-' (put packages in pip_packages)")
    try:
        options, rest = build_parser().parse_args(argv)
    except OptionParsingError as exc:
        message = str(exc).replace("pip_requirements_parser: error: ", "").strip()
        raise ValueError(f"pip option {entry!r}: {message}") from None
    if rest:
        raise ValueError(f"pip option {entry!r}: unexpected {' '.join(rest)!r}")
    given = {k: v for k, v in vars(options).items() if v not in (None, [], False)}
    if given.keys() & _FORBIDDEN_OPTIONS:
        raise ValueError(f"pip option {entry!r}: includes (-r, -c, -e) are not options; list the packages instead")
    return redact_url_credentials(dumps_global_options(given))


def canonical_pip_options(entries: list[str]) -> list[str]:
    """Options keep their order: ``--index-url`` then ``--extra-index-url`` is a priority."""
    return [canonical_pip_option(entry) for entry in entries]


# ------------------------------------------------------------------------------------- conda


@lru_cache(maxsize=_CACHE_SIZE)
def canonical_conda_package(entry: str) -> str:
    """A conda MatchSpec in rattler's normal spelling (name lower-cased; ``=1.2`` stays fuzzy
    ``1.2.*`` and ``==1.2`` stays exact; a ``channel::`` prefix is kept)."""
    from rattler import MatchSpec

    text = entry.strip()
    if not text:
        raise ValueError("empty conda package")
    try:
        return str(MatchSpec(text))
    except Exception as exc:  # rattler raises its own InvalidMatchSpecError
        raise ValueError(f"invalid conda package {text!r}: {exc}") from None


def conda_package_name(entry: str) -> str:
    """Lower-cased package name of a conda spec (for per-variant replacement)."""
    canonical = canonical_conda_package(entry)
    name = canonical.split("::", 1)[-1].split(" ", 1)[0]
    return name.split("[", 1)[0]


def canonical_conda_packages(entries: list[str]) -> list[str]:
    return sorted({canonical_conda_package(entry) for entry in entries})


def canonical_channel(entry: str) -> str:
    text = entry.strip()
    if not text or any(ch.isspace() for ch in text):
        raise ValueError(f"invalid conda channel {entry!r}")
    return redact_url_credentials(text).rstrip("/")


def canonical_channels(entries: list[str]) -> list[str]:
    """Order is priority, so it is kept; a repeated channel adds nothing after its first use."""
    seen: dict[str, None] = {}
    for entry in entries:
        seen.setdefault(canonical_channel(entry), None)
    return list(seen)


# ------------------------------------------------------------------------------------ images


def canonical_image_ref(ref: str) -> str:
    """Docker's reference normalisation: ``ubuntu`` → ``docker.io/library/ubuntu:latest``."""
    return str(parse_reference(ref))


# ------------------------------------------------------------------------------------- whole


def canonical_override(override: VariantOverride, user_managed: bool) -> dict[str, Any]:
    """A variant override in canonical form; an empty override changes nothing → ``{}``."""
    out: dict[str, Any] = {}
    if override.base_image is not None:
        out["base_image"] = canonical_image_ref(override.base_image)
    if override.base_dockerfile is not None:
        out["base_dockerfile"] = normalise_dockerfile(override.base_dockerfile)
    if not user_managed:
        if override.channels:
            out["channels"] = canonical_channels(override.channels)
        if override.conda_packages:
            out["conda_packages"] = canonical_conda_packages(override.conda_packages)
        if override.pip_packages:
            out["pip_packages"] = canonical_pip_packages(override.pip_packages)
        if override.pip_options:
            out["pip_options"] = canonical_pip_options(override.pip_options)
    return out


def base_content(defn: Definition) -> dict[str, Any]:
    docker = defn.docker
    return {
        "base_image": canonical_image_ref(docker.base_image) if docker.base_image is not None else None,
        "base_dockerfile": normalise_dockerfile(docker.base_dockerfile) if docker.base_dockerfile is not None else None,
    }


def conda_content(defn: Definition) -> dict[str, Any]:
    deps = defn.python.conda_dependencies
    return {"channels": canonical_channels(deps.channels), "conda_packages": canonical_conda_packages(deps.conda_packages)}


def pip_content(defn: Definition) -> dict[str, Any]:
    deps = defn.python.conda_dependencies
    return {"pip_options": canonical_pip_options(deps.pip_options), "pip_packages": canonical_pip_packages(deps.pip_packages)}


def spark_content(defn: Definition) -> dict[str, Any]:
    spark = defn.spark
    repositories: dict[str, None] = {}
    for repo in spark.repositories:
        repositories.setdefault(redact_url_credentials(repo.strip()).rstrip("/"), None)
    packages = {(p.group.strip(), p.artifact.strip(), p.version.strip()) for p in spark.packages}
    return {
        "repositories": list(repositories),
        "packages": [{"group": g, "artifact": a, "version": v} for g, a, v in sorted(packages)],
        "precache_packages": spark.precache_packages,
    }


def config_content(defn: Definition) -> dict[str, Any]:
    """What the image is configured with (no layer): variables, interpreter, who manages packages."""
    return {
        "environment_variables": {str(k): str(v) for k, v in defn.environment_variables.items()},
        "interpreter_path": defn.python.interpreter_path.strip(),
        "user_managed_dependencies": defn.python.user_managed_dependencies,
    }


def canonical_form(defn: Definition) -> dict[str, Any]:
    """The definition as plain data, normalised; every default written out explicitly.

    Loaders validate every entry, but a Definition built in code (the client's facade) has not
    been: a bad entry is reported as a DefinitionError, not a crash.
    """
    try:
        return _canonical_form(defn)
    except ValueError as exc:
        raise DefinitionError(str(exc)) from None


def _canonical_form(defn: Definition) -> dict[str, Any]:
    config = config_content(defn)
    user_managed = config["user_managed_dependencies"]
    python: dict[str, Any] = {
        "user_managed_dependencies": user_managed,
        "interpreter_path": config["interpreter_path"],
        # Not installed when user-managed, so not content.
        "conda_dependencies": None if user_managed else {**conda_content(defn), **pip_content(defn)},
    }
    variants = {name: canonical_override(override, user_managed) for name, override in defn.variants.items()}
    return {
        "canonical_version": CANONICAL_VERSION,
        "docker": base_content(defn),
        "python": python,
        "spark": spark_content(defn),
        "environment_variables": config["environment_variables"],
        "variants": {name: body for name, body in variants.items() if body},
    }


def dumps_canonical(data: Any) -> bytes:
    """Compact, key-sorted JSON in UTF-8: the exact bytes that are hashed."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def canonical_bytes(defn: Definition) -> bytes:
    return dumps_canonical(canonical_form(defn))


def spec_hash(defn: Definition) -> str:
    """xxh3-128 of the canonical bytes, 32 hex digits. Offline and pure."""
    return xxhash.xxh3_128_hexdigest(canonical_bytes(defn))


def clear_caches() -> None:
    """Forget memoised entries (the benchmark measures cold and warm hashing)."""
    for cached in (_parse_pip_requirement, canonical_pip_option, canonical_conda_package, parse_reference):
        cached.cache_clear()


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
