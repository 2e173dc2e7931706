"""Explain why two definitions hash differently, in words (how people debug a cache miss).

Works on canonical forms, so only differences that matter are reported: a reordered pip list
is no difference at all, a reordered channel list is one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from envcache.definition.canonical import conda_package_name, pip_package_name


def explain(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The differences between two canonical forms, one line each (empty when they are equal)."""
    out: list[str] = []
    if a["canonical_version"] != b["canonical_version"]:
        out.append(f"canonical format version: {a['canonical_version']} → {b['canonical_version']}")
    _base(a["docker"], b["docker"], "", out)
    pa, pb = a["python"], b["python"]
    if pa["user_managed_dependencies"] != pb["user_managed_dependencies"]:
        out.append(f"user-managed dependencies: {_word(pa['user_managed_dependencies'])} → "
                   f"{_word(pb['user_managed_dependencies'])}")
    if pa["interpreter_path"] != pb["interpreter_path"]:
        out.append(f"interpreter path: {pa['interpreter_path']} → {pb['interpreter_path']}")
    da, db = pa["conda_dependencies"], pb["conda_dependencies"]
    if da is not None and db is not None:
        _packages(da, db, "", out)
    _spark(a["spark"], b["spark"], out)
    _mapping(a["environment_variables"], b["environment_variables"], "environment variable", out)
    for name in sorted(set(a["variants"]) | set(b["variants"])):
        va, vb = a["variants"].get(name, {}), b["variants"].get(name, {})
        if va == vb:
            continue
        prefix = f"variant {name}: "
        base_a = {"base_image": va.get("base_image"), "base_dockerfile": va.get("base_dockerfile")}
        base_b = {"base_image": vb.get("base_image"), "base_dockerfile": vb.get("base_dockerfile")}
        _base(base_a, base_b, prefix, out)
        _packages({k: va.get(k, []) for k in _LISTS}, {k: vb.get(k, []) for k in _LISTS}, prefix, out)
    return out


_LISTS = ("channels", "conda_packages", "pip_packages", "pip_options")


def _word(flag: bool) -> str:
    return "true" if flag else "false"


def _base(a: dict[str, Any], b: dict[str, Any], prefix: str, out: list[str]) -> None:
    ia, ib = a["base_image"], b["base_image"]
    if ia and ib and ia != ib and ia.split("/", 1)[1] == ib.split("/", 1)[1]:
        # Canonical references always start with their registry: same image name, other registry.
        out.append(f"{prefix}base image registry: {ia.split('/', 1)[0]} → {ib.split('/', 1)[0]} "
                   f"(for {ia.split('/', 1)[1]})")
    elif ia != ib:
        out.append(f"{prefix}base image: {ia or '(variant default)'} → {ib or '(variant default)'}")
    sa, sb = a["base_dockerfile"], b["base_dockerfile"]
    if sa is None or sb is None:
        if sa != sb:
            out.append(f"{prefix}base Dockerfile: {'none' if sa is None else 'set'} → {'none' if sb is None else 'set'}")
    else:
        _ordered(sa, sb, "Dockerfile step", prefix, out)


def _ordered(a: list[str], b: list[str], what: str, prefix: str, out: list[str]) -> None:
    """Lists whose order matters (channels, pip options, Spark repositories, Dockerfile steps)."""
    for item in a:
        if item not in b:
            out.append(f"{prefix}{what} removed: {item}")
    for item in b:
        if item not in a:
            out.append(f"{prefix}{what} added: {item}")
    common_a = [x for x in a if x in b]
    common_b = [x for x in b if x in a]
    if common_a != common_b:
        out.append(f"{prefix}{what} order changed: {', '.join(common_a)} → {', '.join(common_b)}")


def _by_name(a: list[str], b: list[str], what: str, name_of: Callable[[str], str], prefix: str,
             out: list[str]) -> None:
    """Sets of packages: report added / removed / changed per package name."""
    ga: dict[str, list[str]] = {}
    gb: dict[str, list[str]] = {}
    for items, groups in ((a, ga), (b, gb)):
        for item in items:
            groups.setdefault(name_of(item), []).append(item)
    for name in sorted(set(ga) | set(gb)):
        xa, xb = ga.get(name, []), gb.get(name, [])
        if xa == xb:
            continue
        if not xa:
            out.extend(f"{prefix}{what} added: {item}" for item in xb)
        elif not xb:
            out.extend(f"{prefix}{what} removed: {item}" for item in xa)
        else:
            out.append(f"{prefix}{what} changed: {'; '.join(xa)} → {'; '.join(xb)}")


def _pip_name(entry: str) -> str:
    """Verbatim entries (URLs, paths) have no name: each one is its own group."""
    return pip_package_name(entry) or entry


def _packages(a: dict[str, Any], b: dict[str, Any], prefix: str, out: list[str]) -> None:
    _ordered(a["channels"], b["channels"], "conda channel", prefix, out)
    _by_name(a["conda_packages"], b["conda_packages"], "conda package", conda_package_name, prefix, out)
    _by_name(a["pip_packages"], b["pip_packages"], "pip package", _pip_name, prefix, out)
    _ordered(a["pip_options"], b["pip_options"], "pip option", prefix, out)


def _spark(a: dict[str, Any], b: dict[str, Any], out: list[str]) -> None:
    _ordered(a["repositories"], b["repositories"], "Spark repository", "", out)
    coords_a = [f"{p['group']}:{p['artifact']}:{p['version']}" for p in a["packages"]]
    coords_b = [f"{p['group']}:{p['artifact']}:{p['version']}" for p in b["packages"]]
    _by_name(coords_a, coords_b, "Spark package", lambda c: c.rsplit(":", 1)[0], "", out)
    if a["precache_packages"] != b["precache_packages"]:
        out.append(f"Spark precache packages: {_word(a['precache_packages'])} → {_word(b['precache_packages'])}")


def _mapping(a: dict[str, str], b: dict[str, str], what: str, out: list[str]) -> None:
    for key in sorted(set(a) | set(b)):
        if key not in b:
            out.append(f"{what} removed: {key}")
        elif key not in a:
            out.append(f"{what} added: {key}")
        elif a[key] != b[key]:
            out.append(f"{what} changed: {key}")
