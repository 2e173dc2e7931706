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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import xxhash
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import Specifier
from packaging.utils import canonicalize_name, canonicalize_version

from envcache.errors import DefinitionError
from envcache.definition.dockerfile import dockerfile_base_image, normalise_dockerfile
from envcache.definition.model import Definition, VariantOverride, redact_url_credentials
from envcache.definition.wheel import PinnedWheel, pinned_wheel
from envcache.oci import is_registry_host, names_registry, parse_reference, registry_host

# Bump whenever a rule below changes what bytes a definition canonicalises to: it is part of the
# hashed bytes, so old hashes can never be confused with new ones.
# 2: PEP 440 zero padding for ==, !=, <, <=, >, >=; ~= and prefix operands as written; index URLs
#    as pip joins them; conda version clauses ordered; base_image_registry.address is content.
# 3: a direct reference to a wheel pinned by ``#sha256=`` is its file name and digest, wherever it
#    is served from (bare wheel URLs included).
CANONICAL_VERSION = 3

# --------------------------------------------------------------------------------------- pip


@dataclass
class PipRequirement:
    """A parsed pip entry. Named requirements are merged by (name, url, marker); anything pip
    accepts that is not PEP 508 (VCS URLs, paths, ``-e``) is kept verbatim as ``verbatim``. A
    wheel pinned by its sha256 has its location-free spelling as ``url`` and itself as ``wheel``."""

    name: str | None = None
    extras: set[str] = field(default_factory=set)
    specifiers: set[str] = field(default_factory=set)
    url: str | None = None
    marker: str | None = None
    hashes: set[str] = field(default_factory=set)
    verbatim: str | None = None
    wheel: PinnedWheel | None = None

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
_BARE_URL = re.compile(r"(?i:https?|file)://\S+")
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
    # A bare URL of a pinned wheel is what pip makes of it: the project its file name says.
    wheel = pinned_wheel(text) if _BARE_URL.fullmatch(text) else None
    if wheel is not None:
        return PipRequirement(name=wheel.name, url=wheel.canonical_url, hashes=hashes, wheel=wheel)
    if _NOT_PEP508.match(text):
        return PipRequirement(verbatim=" ".join(text.split()), hashes=hashes)
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise ValueError(f"invalid pip requirement {entry.strip()!r}: {_first_line(exc)}") from None
    specifiers = {_normalise_specifier(spec) for spec in req.specifier}
    wheel = pinned_wheel(req.url, req.name) if req.url else None
    return PipRequirement(
        name=canonicalize_name(req.name),
        extras={canonicalize_name(extra) for extra in req.extras},
        specifiers=specifiers,
        url=wheel.canonical_url if wheel else req.url.strip() if req.url else None,
        marker=str(req.marker) if req.marker else None,
        hashes=hashes,
        wheel=wheel,
    )


# Operators whose operand PEP 440 compares as a version, zero-padding the release segment:
# ``==2.2`` ≡ ``==2.2.0`` (README, "Canonical rules", has the table with the reasons).
_PADDED_OPERATORS = frozenset({"==", "!=", "<=", ">=", "<", ">"})


def _normalise_specifier(spec: Specifier) -> str:
    """The spelling shared by every specifier pip treats alike.

    ``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=`` compare versions with the release segment
    zero-padded (PEP 440), so their operand is written as a version with trailing release zeros
    dropped (``>=2.0.0`` → ``>=2``), which is how ``packaging`` itself defines specifier
    equality. Everything else is kept as written (packaging only strips blanks): ``~=`` takes its
    prefix from the operand's length (``~=1.4`` allows 1.9, ``~=1.4.0`` does not), a prefix match
    ``==1.2.*`` is a prefix of that length, ``===`` compares strings, and pip 23's packaging
    builds the ``~=`` and ``.*`` prefixes from the text (``==1.02.*`` matches no 1.2 there).
    """
    if spec.operator in _PADDED_OPERATORS and not spec.version.endswith(".*"):
        return spec.operator + canonicalize_version(spec.version, strip_trailing_zero=True)
    return spec.operator + spec.version


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


def pinned_wheels(defn: Definition) -> list[PinnedWheel]:
    """Every wheel ``defn`` pins by digest, its variants' included, once each, in order."""
    entries = [*defn.python.conda_dependencies.pip_packages,
               *(entry for override in defn.variants.values() for entry in override.pip_packages)]
    found: dict[str, PinnedWheel] = {}
    for entry in entries:
        wheel = parse_pip_requirement(entry).wheel
        if wheel is not None:
            found.setdefault(wheel.digest, wheel)
    return list(found.values())


def wheel_digests(document: Any) -> set[str]:
    """Digests of the wheels pinned in a stored document: a definition as ``definition_to_dict``
    writes it, or a canonical form — every ``pip_packages`` list at any depth (variants too).
    What gc and wheel removal read from registered environments and cached images."""
    found: set[str] = set()
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "pip_packages" and isinstance(value, list):
                    found.update(_wheel_digest(entry) for entry in value if isinstance(entry, str))
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    found.discard("")
    return found


def _wheel_digest(entry: str) -> str:
    try:
        wheel = parse_pip_requirement(entry).wheel
    except ValueError:  # stored documents were validated; a bad one pins nothing
        return ""
    return wheel.digest if wheel is not None else ""


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
    if "index_url" in given:
        given["index_url"] = _index_url(given["index_url"])
    if "extra_index_urls" in given:
        given["extra_index_urls"] = [_index_url(url) for url in given["extra_index_urls"]]
    return redact_url_credentials(dumps_global_options(given))


def _index_url(url: str) -> str:
    """An index URL as pip uses it: pip asks for ``posixpath.join(url, project) + "/"``, which
    is the same request with or without one trailing ``/`` (``…/simple`` ≡ ``…/simple/``, but
    ``…/simple//`` asks for ``…/simple//numpy/``), so the slash join would add is written out.
    ``--find-links`` is not an index: a page's relative links resolve against its own URL, where
    a trailing ``/`` changes the result, so find-links locations stay as written."""
    return url if not url or url.endswith("/") else url + "/"


def canonical_pip_options(entries: list[str]) -> list[str]:
    """Options keep their order: ``--index-url`` then ``--extra-index-url`` is a priority."""
    return [canonical_pip_option(entry) for entry in entries]


# ------------------------------------------------------------------------------------- conda


@lru_cache(maxsize=_CACHE_SIZE)
def canonical_conda_package(entry: str) -> str:
    """A conda MatchSpec in rattler's normal spelling (name lower-cased; bracket keys in rattler's
    order; ``=1.2`` stays fuzzy ``1.2.*`` and ``==1.2`` stays exact; a ``channel::`` prefix and
    the build string are kept), with the clauses of its version spec in a normal order."""
    from rattler import MatchSpec

    text = entry.strip()
    if not text:
        raise ValueError("empty conda package")
    try:
        spec = MatchSpec(text)
    except Exception as exc:  # rattler raises its own InvalidMatchSpecError
        raise ValueError(f"invalid conda package {text!r}: {exc}") from None
    written = str(spec)
    if spec.version is None:
        return written
    # rattler writes ``[channel::]name version[ build][[key="value", …]]``: the version is the
    # first blank-separated field after the name, and only it is replaced.
    head, _, rest = written.partition(" ")
    ordered = _ordered_version_spec(spec.version)
    if ordered == spec.version or not rest.startswith(spec.version):
        return written
    candidate = f"{head} {ordered}{rest[len(spec.version):]}"
    reread = MatchSpec(candidate)
    # Only if rattler reads the reordered spec back as exactly that (same version, same spelling
    # of every other part); otherwise the order stays as written: a possible miss, never a merge.
    return candidate if reread.version == ordered and str(reread) == candidate else written


def _ordered_version_spec(version: str) -> str:
    """A conda version spec with its clauses in a normal order.

    In a conda version spec ``,`` is *and*, ``|`` is *or* (``,`` binds tighter, parentheses
    group), and a package matches by evaluating that expression: the order of the operands of
    one *and* or one *or* means nothing (``>=3.10,<3.12`` ≡ ``<3.12,>=3.10``), and a repeated
    operand adds nothing. py-rattler exposes no tree, so the tree is read back from rattler's own
    spelling (where no constraint contains ``,|()``), its operands sorted, and the result
    re-spelled by rattler's ``VersionSpec``.
    """
    from rattler import VersionSpec

    tokens = re.findall(r"[(),|]|[^(),|]+", version)
    try:
        tree, end = _or_group(tokens, 0)
        if end != len(tokens):
            return version
        return str(VersionSpec(_render(tree, inside_and=False)))
    except Exception:  # a spelling this reader does not know (a newer rattler): keep the order as written
        return version


_Tree = str | tuple[str, tuple["_Tree", ...]]  # a constraint, or (operator, operands)
_Parser = Callable[[list[str], int], tuple[_Tree, int]]


def _or_group(tokens: list[str], at: int) -> tuple[_Tree, int]:
    return _group(tokens, at, "|", _and_group)


def _and_group(tokens: list[str], at: int) -> tuple[_Tree, int]:
    return _group(tokens, at, ",", _operand)


def _group(tokens: list[str], at: int, operator: str, parse: _Parser) -> tuple[_Tree, int]:
    """``operand (operator operand)*``, flattened (``a,(b,c)`` is ``a,b,c``), operands as a set."""
    operands: list[_Tree] = []
    while True:
        operand, at = parse(tokens, at)
        if isinstance(operand, tuple) and operand[0] == operator:
            operands.extend(operand[1])
        else:
            operands.append(operand)
        if at < len(tokens) and tokens[at] == operator:
            at += 1
            continue
        break
    unique = sorted(set(operands), key=lambda o: _render(o, inside_and=operator == ","))
    return (unique[0] if len(unique) == 1 else (operator, tuple(unique))), at


def _operand(tokens: list[str], at: int) -> tuple[_Tree, int]:
    if at >= len(tokens):
        raise ValueError("unexpected end of version spec")
    if tokens[at] == "(":
        inner, at = _or_group(tokens, at + 1)
        if at >= len(tokens) or tokens[at] != ")":
            raise ValueError("unbalanced parenthesis in version spec")
        return inner, at + 1
    if tokens[at] in "),|":
        raise ValueError(f"unexpected {tokens[at]!r} in version spec")
    return tokens[at].strip(), at + 1


def _render(tree: _Tree, *, inside_and: bool) -> str:
    if isinstance(tree, str):
        return tree
    operator, operands = tree
    text = operator.join(_render(o, inside_and=operator == ",") for o in operands)
    return f"({text})" if operator == "|" and inside_and else text


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


@lru_cache(maxsize=_CACHE_SIZE)
def canonical_image_ref(ref: str) -> str:
    """Docker's reference normalisation: ``ubuntu`` → ``docker.io/library/ubuntu:latest``.
    Memoised as text too: a hash needs the string, not the parsed reference."""
    return str(parse_reference(ref))


@lru_cache(maxsize=_CACHE_SIZE)
def canonical_registry_address(address: str) -> str | None:
    """``docker.base_image_registry.address`` as a registry host (``host[:port]``, lower-cased),
    or None when it is blank. Azure calls it "the DNS name or IP address" of the registry; a
    scheme or a path would leave it unclear which image is meant, so either is an error."""
    text = address.strip()
    if not text:
        return None
    if not is_registry_host(text):
        raise ValueError(f"invalid registry address {address!r}: expected a registry host such as "
                         f"'myregistry.azurecr.io' or 'localhost:5000' (no scheme, no path)")
    return registry_host(text)


def qualified_image_ref(ref: str, address: str | None) -> str:
    """A base image reference read the way Azure ML reads ``docker.base_image`` with
    ``base_image_registry.address``: a reference that names no registry comes from the address
    (``team/base:1.0`` at ``myregistry.azurecr.io`` is ``myregistry.azurecr.io/team/base:1.0``);
    one that names its registry is taken as written, the address then only saying where the
    credentials apply. Normalised as :func:`canonical_image_ref` does."""
    host = canonical_registry_address(address) if address is not None else None
    if host is not None and not names_registry(ref):
        ref = f"{host}/{ref.strip()}"
    return canonical_image_ref(ref)


def base_reference(defn: Definition) -> str | None:
    """The full reference of the image ``defn`` builds on, for resolving and pulling it.

    ``docker.base_image`` qualified by ``base_image_registry.address``
    (:func:`qualified_image_ref`); for a ``base_dockerfile``, its first ``FROM`` as Docker reads
    it (ARG defaults declared before it substituted; no address applied, envcache never rewrites
    a Dockerfile; ``scratch`` as is; a reference with an unresolved ``$`` as written); None when
    the definition names no base (the daemon's base for the variant applies). For a variant,
    pass ``for_variant(defn, variant)``: a variant's own base image is qualified by the address
    too. The username and password are never part of it.
    """
    docker = defn.docker
    if docker.base_dockerfile is not None:
        ref = dockerfile_base_image(docker.base_dockerfile)
        if ref is None or ref == "scratch":
            return ref
        try:
            return canonical_image_ref(ref)
        except ValueError:
            return ref
    if docker.base_image is not None:
        return qualified_image_ref(docker.base_image, docker.base_image_registry.address)
    return None


# ------------------------------------------------------------------------------------- whole


def canonical_override(override: VariantOverride, user_managed: bool, address: str | None) -> dict[str, Any]:
    """A variant override in canonical form; an empty override changes nothing → ``{}``.
    ``address`` is the definition's base image registry: it qualifies the variant's base too."""
    out: dict[str, Any] = {}
    if override.base_image is not None:
        out["base_image"] = qualified_image_ref(override.base_image, address)
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
        "base_image": (qualified_image_ref(docker.base_image, docker.base_image_registry.address)
                       if docker.base_image is not None else None),
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
    address = defn.docker.base_image_registry.address
    variants = {name: canonical_override(override, user_managed, address) for name, override in defn.variants.items()}
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
    for cached in (_parse_pip_requirement, canonical_pip_option, canonical_conda_package, canonical_image_ref,
                   parse_reference, canonical_registry_address):
        cached.cache_clear()


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
