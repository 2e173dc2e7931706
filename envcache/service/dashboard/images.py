"""``/ui/images``: cached images, most recently used first, and one image in full — its layers
and their compression, its lock (every installed package, the requested ones marked), its
builds, and where it was pushed upstream."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from packaging.utils import canonicalize_name

from envcache.builder.lock import Lock
from envcache.definition.canonical import conda_package_name, pip_package_name
from envcache.errors import InvalidInput
from envcache.oci import ManifestInvalid, parse_image_tag, parse_manifest
from envcache.service.dashboard.render import PAGE_SIZE, Route, cursor, page, parse_cursor
from envcache.service.views.common import daemon
from envcache.store import Store, StoredImage

@dataclass
class Layers:
    """An image's layers as its manifest lists them (empty when the manifest cannot be read)."""

    items: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def compression(self) -> str:
        kinds = sorted({layer["compression"] for layer in self.items})
        return ", ".join(kinds) if kinds else "—"


def compression_of(media_type: str | None) -> str:
    """``…tar+zstd`` → ``zstd``; a plain tar (or a foreign type) says so."""
    suffix = (media_type or "").rpartition("+")[2]
    if suffix in ("zstd", "gzip"):
        return suffix
    return "gzip" if (media_type or "").endswith("tar.gzip") else "none"  # Docker's own gzip layer type


async def layers_of(store: Store, image: StoredImage, *, with_config: bool = False) -> Layers:
    body = await store.files.read(image.manifest_digest)
    try:
        manifest = parse_manifest(body) if body is not None else None
    except ManifestInvalid:
        manifest = None
    if manifest is None:
        return Layers()
    items = [{"digest": layer.digest, "size": layer.size or 0, "media_type": layer.media_type or "",
              "compression": compression_of(layer.media_type)} for layer in manifest.layers]
    config: dict[str, Any] = {}
    if with_config and manifest.config is not None:
        raw = await store.files.read(manifest.config.digest)
        try:
            config = json.loads(raw) if raw else {}
        except ValueError:
            config = {}
        # Layer-making history entries, in order, name the step that made each layer.
        steps = [str(h.get("created_by", "")).removeprefix("/bin/sh -c ").removeprefix("#(nop) ").strip()
                 for h in config.get("history", []) if not h.get("empty_layer")]
        if len(steps) == len(items):
            for item, step in zip(items, steps):
                item["step"] = step
    return Layers(items, config)


async def listing(request: web.Request) -> web.Response:
    store = daemon(request).store
    after = parse_cursor(request.query.get("after"), "after")
    found = await store.images.page(PAGE_SIZE + 1, after)
    more = len(found) > PAGE_SIZE
    found = found[:PAGE_SIZE]
    rows = []
    for image in found:
        started = await store.builds.page(1, key=image.key)
        rows.append({"image": image, "layers": await layers_of(store, image),
                     "environment": started[0] if started and started[0].env_name else None})
    count, size = await store.images.totals()
    return page(request, "images.html", section="images", rows=rows, count=count, size=size,
                first_page=after is None,
                next_cursor=cursor(found[-1].last_used, found[-1].key) if more else None)


def lock_sections(image: StoredImage) -> list[dict[str, Any]]:
    """The lock per kind, each entry marked requested (named in the definition) or transitive."""
    canonical = json.loads(image.canonical) if image.canonical else {}
    deps = (canonical.get("python") or {}).get("conda_dependencies") or {}
    asked_pip = {pip_package_name(entry) for entry in deps.get("pip_packages", [])} - {None}
    asked_conda = {conda_package_name(entry) for entry in deps.get("conda_packages", [])}
    asked_spark = {f"{p['group']}:{p['artifact']}" for p in (canonical.get("spark") or {}).get("packages", [])}
    sections = []
    # Lock.from_json also reads locks written before they were per package (pip freeze lines).
    pip = [{"name": e["name"], "version": e["version"] or e.get("url") or "",
            "detail": (e.get("sha256") or "")[:12], "requested": canonicalize_name(e["name"]) in asked_pip}
           for e in Lock.from_json(image.lock).pip]
    conda = [{"name": r.get("name", "?"), "version": r.get("version", ""),
              "detail": " ".join(filter(None, [r.get("build"), r.get("channel")])),
              "requested": str(r.get("name", "")).lower() in asked_conda} for r in image.lock.get("conda", [])]
    spark = [{"name": r.get("coordinate", "?"), "version": "", "detail": (r.get("sha256") or "")[:12],
              "requested": ":".join(str(r.get("coordinate", "")).split(":")[:2]) in asked_spark}
             for r in image.lock.get("spark", [])]
    for kind, label, entries in (("pip", "pip", pip), ("conda", "conda", conda), ("spark", "Spark jars", spark)):
        if entries:
            sections.append({"kind": kind, "label": label, "entries": entries,
                             "requested": sum(1 for e in entries if e["requested"])})
    return sections


async def detail(request: web.Request) -> web.Response:
    parts = daemon(request)
    key, variant = parse_image_tag(request.match_info["key"])
    image = await parts.ensurer.image(key)
    if variant is not None and variant != image.variant:
        raise InvalidInput(f"image {key[:16]}… is a {image.variant} image, not {variant[:20]}")
    layers = await layers_of(parts.store, image, with_config=True)
    return page(
        request, "image.html", section="images", image=image, reference=f"{request.host}/{image.repository}:{image.tag}",
        layers=layers, largest=max((layer["size"] for layer in layers.items), default=1) or 1,
        lock=lock_sections(image), unpinned=image.lock.get("unpinned", []),
        upstreams=parts.config.upstreams, pushes=await parts.store.pushes.for_tag(image.repository, image.tag),
        builds=await parts.store.builds.page(20, key=image.key),
    )


ROUTES: list[Route] = [
    ("GET", "/ui/images", listing),
    ("GET", "/ui/images/{key}", detail),
]
