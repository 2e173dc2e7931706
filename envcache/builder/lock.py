"""The lock: every package an image's stages installed, exactly enough to install them again.

A key names one environment, so every machine that builds a key must install the same
packages. Resolution drifts (an index gains a release, a channel a build), so the first build of
a key records what it resolved — per package, with the artifact and its sha256 — and every later
build of that key installs exactly that: pip from ``name==version --hash=sha256:…`` lines with
``--no-deps``, conda from explicit ``name ==version build[sha256=…]`` specs, Spark jars checked
against their recorded sha256. ``envcache ensure --refresh`` is the one way to resolve again.

The lock is per package (not one opaque file) so that it can be shown, diffed ("requests
2.32.2 → 2.32.3"), exported as requirements or conda-lock, and installed group by group.

Document (JSON, written with sorted keys, so equal locks are equal bytes)::

    {"format": 1,
     "pip":   [{"name", "version", "url", "filename", "sha256", "requested"}],
     "conda": [{"name", "version", "build", "channel", "subdir", "url", "sha256", "md5"}],
     "spark": [{"coordinate", "sha256", "path"} | {"coordinate", "precached": false}],
     "unpinned": ["pip:urllib3", "conda:numpy"]}

``unpinned`` names every locked package the definition does not pin to one exact version —
transitive dependencies included — so a refresh knows which stages can resolve differently.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from envcache.definition.model import Definition, redact_url_credentials

FORMAT = 1
#: The kinds of stage that resolve packages, in build order; each has its part of the lock.
KINDS = ("conda", "pip", "spark")
#: Media type of the lock as an OCI artifact (``envcache/lock:<image tag>``) and as its layer.
MEDIA_TYPE = "application/vnd.envcache.lock.v1+json"

Entry = dict[str, Any]


@dataclass(frozen=True)
class Lock:
    """An image's lock; ``pip``/``conda``/``spark`` are sorted lists of per-package entries."""

    pip: tuple[Entry, ...] = ()
    conda: tuple[Entry, ...] = ()
    spark: tuple[Entry, ...] = ()
    unpinned: tuple[str, ...] = field(default=())

    def part(self, kind: str) -> list[Entry]:
        """What stage ``kind`` installed (what its stage key and its exact re-install use)."""
        return list(getattr(self, kind))

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "pip": list(self.pip), "conda": list(self.conda), "spark": list(self.spark),
                "unpinned": list(self.unpinned)}

    def dumps(self) -> bytes:
        """The lock document's bytes: equal locks, equal bytes (and equal artifact digests)."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def packages(self) -> int:
        return len(self.pip) + len(self.conda) + len(self.spark)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Lock:
        """A lock document as stored; an image built before locks were per package (``pip`` as
        ``pip freeze`` lines) reads as far as it can, without artifacts or hashes."""
        data = data or {}
        pip = [entry if isinstance(entry, dict) else _freeze_entry(str(entry)) for entry in data.get("pip") or []]
        return cls(tuple(sort_entries(e for e in pip if e)), tuple(sort_entries(data.get("conda") or [])),
                   tuple(data.get("spark") or []), tuple(data.get("unpinned") or []))

    def with_parts(self, parts: Mapping[str, Sequence[Entry]], view: Definition) -> Lock:
        """This lock with ``parts`` replaced, and ``unpinned`` recomputed for ``view``."""
        merged = {kind: list(parts.get(kind, self.part(kind))) for kind in KINDS}
        return Lock(tuple(sort_entries(merged["pip"])), tuple(sort_entries(merged["conda"])),
                    tuple(merged["spark"]), tuple(unpinned(merged["pip"], merged["conda"], view)))


def part_digest(entries: Sequence[Entry]) -> str:
    """sha256 of one stage's part of the lock: what its stage key covers."""
    return "sha256:" + hashlib.sha256(json.dumps(list(entries), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sort_entries(entries: Iterable[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: (_normal(str(e.get("name", ""))), str(e.get("version", ""))))


def _normal(name: str) -> str:
    """PEP 503 normal name (conda names are lower-case already)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _freeze_entry(line: str) -> Entry | None:
    name, sep, version = line.strip().partition("==")
    return {"name": _normal(name), "version": version, "url": None, "filename": None, "sha256": None,
            "requested": False} if sep and name else None


# --- pip --------------------------------------------------------------------------------------


def pip_entries(report: Mapping[str, Any]) -> list[Entry]:
    """The lock entries of a pip installation report (``pip install --report``): one per package
    pip installed or would install, with the artifact it came from and that artifact's sha256."""
    entries = []
    for item in report.get("install") or []:
        info = item.get("download_info") or {}
        archive = info.get("archive_info") or {}
        hashes = dict(archive.get("hashes") or {})
        if not hashes and "=" in str(archive.get("hash", "")):
            algorithm, _, value = archive["hash"].partition("=")
            hashes[algorithm] = value
        url = redact_url_credentials(str(info.get("url", "")))
        vcs = info.get("vcs_info")
        if vcs:
            url = f"{vcs.get('vcs', 'git')}+{url}@{vcs.get('commit_id', '')}"
        metadata = item.get("metadata") or {}
        entries.append({
            "name": _normal(str(metadata.get("name", ""))), "version": str(metadata.get("version", "")),
            "url": url or None, "filename": url.rsplit("/", 1)[-1].split("#")[0] if archive else None,
            "sha256": hashes.get("sha256"), "requested": bool(item.get("requested")),
            **({"direct": True} if item.get("is_direct") else {}),
        })
    return sort_entries(entries)


def pip_requirements(entries: Sequence[Entry]) -> list[str]:
    """Requirement lines that install exactly ``entries`` (with pip's ``--no-deps``): pinned by
    version, and by artifact hash when every entry has one (pip's hash-checking mode is all or
    nothing); a direct URL or VCS requirement as its URL."""
    hashed = all(entry.get("sha256") for entry in entries)
    lines = []
    for entry in entries:
        line = f"{entry['name']} @ {entry['url']}" if entry.get("direct") else f"{entry['name']}=={entry['version']}"
        lines.append(line + (f" --hash=sha256:{entry['sha256']}" if hashed else ""))
    return lines


# --- conda ------------------------------------------------------------------------------------


def conda_specs(entries: Sequence[Entry]) -> list[str]:
    """Explicit MatchSpecs that select exactly ``entries``: version, build and sha256."""
    return [f"{e['name']} =={e['version']} {e['build']}" + (f"[sha256={e['sha256']}]" if e.get("sha256") else "")
            for e in entries]


# --- unpinned ---------------------------------------------------------------------------------


def unpinned(pip: Sequence[Entry], conda: Sequence[Entry], view: Definition) -> list[str]:
    """Locked packages the definition does not pin to one version: their resolution can drift,
    so a refresh may change them. Transitive dependencies count: the definition never pins them."""
    deps = view.python.conda_dependencies
    pinned_pip = {name for name in map(_pip_pin, deps.pip_packages) if name}
    pinned_conda = {name for name in map(_conda_pin, deps.conda_packages) if name}
    return ([f"pip:{e['name']}" for e in pip if e["name"] not in pinned_pip and not e.get("direct")] +
            [f"conda:{e['name']}" for e in conda if e["name"] not in pinned_conda])


def _pip_pin(requirement: str) -> str | None:
    """The normal name when ``requirement`` pins one exact version (``==1.2``, ``===1.2``)."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        parsed = Requirement(requirement.split(" --hash", 1)[0])
    except InvalidRequirement:
        return None
    specs = list(parsed.specifier)
    if parsed.url or (len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version):
        return _normal(parsed.name)
    return None


_CONDA_NAME = re.compile(r"\s*([^\s=<>!~\[]+)\s*(.*)")


def _conda_pin(spec: str) -> str | None:
    """The name when a conda spec pins one exact version (``name ==1.2``, ``name=1.2=build``)."""
    match = _CONDA_NAME.fullmatch(spec.split("::")[-1])
    if match is None:
        return None
    name, rest = match.group(1), match.group(2).strip()
    exact = rest.startswith("==") or (rest.startswith("=") and not rest.endswith("*") and rest.count("=") >= 2)
    return name.lower() if exact else None


# --- changes and exports ----------------------------------------------------------------------


def changes(old: Lock, new: Lock) -> list[str]:
    """What a refresh changed, one line per package: ``requests 2.32.2 → 2.32.3``, ``+ idna 3.7``,
    ``- chardet 5.2.0`` (conda packages prefixed ``conda``, Spark jars ``spark``)."""
    lines: list[str] = []
    for kind in KINDS:
        prefix = "" if kind == "pip" else f"{kind} "
        before, after = _versions(old.part(kind)), _versions(new.part(kind))
        for name in sorted(before.keys() | after.keys()):
            was, now = before.get(name), after.get(name)
            if was == now:
                continue
            if was is None:
                lines.append(f"+ {prefix}{name} {now}")
            elif now is None:
                lines.append(f"- {prefix}{name} {was}")
            else:
                lines.append(f"{prefix}{name} {was} → {now}")
    return lines


def _versions(entries: Sequence[Entry]) -> dict[str, str]:
    out = {}
    for entry in entries:
        if "coordinate" in entry:
            group_artifact, _, version = str(entry["coordinate"]).rpartition(":")
            out[group_artifact] = f"{version} ({str(entry.get('sha256') or '')[:12]})"
        else:
            build = f" {entry['build']}" if entry.get("build") else ""
            out[entry["name"]] = f"{entry['version']}{build}"
    return out


def export_requirements(lock: Lock) -> str:
    """The pip part as a hash-pinned requirements file (``pip install --no-deps -r``)."""
    header = ["# envcache lock: install with `pip install --no-deps -r THIS_FILE` (exactly these artifacts)"]
    return "\n".join(header + pip_requirements(lock.pip)) + "\n"


def export_conda_lock(lock: Lock, platform: str = "linux-64") -> str:
    """The lock in conda-lock's unified format (version 1): conda and pip packages with their
    artifact URLs and hashes, as ``conda-lock install`` reads it."""
    import yaml

    channels = sorted({str(e["channel"]) for e in lock.conda if e.get("channel")})
    packages = [
        {"name": e["name"], "version": e["version"], "manager": "conda", "platform": platform, "dependencies": {},
         "url": e.get("url"), "hash": {k: e[k] for k in ("md5", "sha256") if e.get(k)}, "category": "main",
         "optional": False}
        for e in lock.conda
    ] + [
        {"name": e["name"], "version": e["version"], "manager": "pip", "platform": platform, "dependencies": {},
         "url": e.get("url"), "hash": {"sha256": e["sha256"]} if e.get("sha256") else {}, "category": "main",
         "optional": False}
        for e in lock.pip
    ]
    document = {
        "version": 1,
        "metadata": {"content_hash": {platform: hashlib.sha256(lock.dumps()).hexdigest()},
                     "channels": [{"url": c, "used_env_vars": []} for c in channels],
                     "platforms": [platform], "sources": ["envcache"]},
        "package": packages,
    }
    return yaml.safe_dump(document, sort_keys=False)


def render(lock: Lock) -> str:
    """The lock for people: one line per package, then what is unpinned."""
    lines = []
    for entry in lock.conda:
        lines.append(f"conda  {entry['name']} {entry['version']} {entry.get('build', '')}  "
                     f"{(entry.get('sha256') or '-')[:16]}  {entry.get('channel') or ''}".rstrip())
    for entry in lock.pip:
        lines.append(f"pip    {entry['name']} {entry['version']}  {(entry.get('sha256') or '-')[:16]}  "
                     f"{entry.get('filename') or entry.get('url') or ''}{'' if entry.get('requested') else '  (dependency)'}")
    for entry in lock.spark:
        lines.append(f"spark  {entry['coordinate']}  {(entry.get('sha256') or '-')[:16]}")
    if not lines:
        lines.append("(no packages: nothing is installed on top of the base image)")
    pinned = "every package is pinned" if not lock.unpinned else f"unpinned: {', '.join(lock.unpinned)}"
    return "\n".join(lines + [pinned])
