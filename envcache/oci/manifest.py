"""Descriptors, image manifests and indexes: one parser for every reader.

The store validates what is pushed with it, gc and fsck walk stored documents with it, the
upstream copy checks what a remote registry sends with it, and the builder reads and writes
images with it. Bodies are kept byte for byte by the store; these types are only a view.

:func:`parse_manifest` accepts what the distribution spec lets a registry store: entries that
are not objects are ignored, index children with unusable digests are not references (an index
may list content kept elsewhere), foreign layers (with ``urls``) are not required to be present.
Stricter callers (an upstream copy trusts nothing) use :meth:`Manifest.check_sizes`.
"""

from __future__ import annotations

import base64
import json
import platform as _platform
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envcache.errors import InvalidInput
from envcache.oci.digest import digest_bytes, is_digest
from envcache.oci.media import EMPTY_JSON, INDEX_TYPES, OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST


class ManifestInvalid(InvalidInput):
    """A manifest body we will not accept (not JSON, wrong shape, bad descriptors)."""


@dataclass(frozen=True)
class Descriptor:
    """A reference to content: its media type, digest and size (plus what an index entry adds)."""

    digest: str
    media_type: str | None = None
    size: int | None = None
    urls: tuple[str, ...] = ()
    platform: Mapping[str, str] | None = None
    annotations: Mapping[str, str] | None = None
    artifact_type: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> Descriptor | None:
        """The descriptor in ``data``, or None when it is not an object with a usable digest."""
        if not isinstance(data, dict) or not is_digest(data.get("digest")):
            return None
        urls = data.get("urls")
        size = data.get("size")
        return cls(
            digest=data["digest"],
            media_type=data["mediaType"] if isinstance(data.get("mediaType"), str) else None,
            size=size if isinstance(size, int) and not isinstance(size, bool) else None,
            urls=tuple(u for u in urls if isinstance(u, str)) if isinstance(urls, list) else (),
            platform=data["platform"] if isinstance(data.get("platform"), dict) else None,
            annotations=data["annotations"] if isinstance(data.get("annotations"), dict) else None,
            artifact_type=data["artifactType"] if isinstance(data.get("artifactType"), str) else None,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        return out


@dataclass(frozen=True)
class Manifest:
    """An image manifest or an index, as parsed from its body."""

    doc: dict[str, Any]
    media_type: str | None                       # the body's own ``mediaType``
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()       # an index's children
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    is_index: bool = False
    _raw: dict[str, list[Any]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def blobs(self) -> list[Descriptor]:
        """Config and layers that must be present in the registry (foreign layers excepted)."""
        return [d for d in (self.config, *self.layers) if d is not None and not d.urls]

    @property
    def layer_digests(self) -> list[str]:
        return [layer.digest for layer in self.layers]

    def check_sizes(self, where: str) -> None:
        """Every descriptor is an object with a digest and a size (what a copy needs to verify
        each blob as it streams); raises ManifestInvalid naming ``where`` otherwise."""
        for desc in self._raw.get("manifests", []) + self._raw.get("blobs", []):
            if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str) \
                    or not isinstance(desc.get("size"), int) or desc["size"] < 0:
                raise ManifestInvalid(f"{where}: malformed descriptor {str(desc)[:200]}")

    def platform_child(self, wanted: tuple[str, str] | None = None) -> Descriptor | None:
        """The index entry for ``wanted`` (os, architecture; the host's by default), else
        linux/amd64, else the first: the one choice every resolver and loader makes alike."""
        wanted = wanted or host_platform()

        def of(child: Descriptor) -> tuple[str, str]:
            p = child.platform or {}
            return p.get("os", ""), p.get("architecture", "")

        children = list(self.manifests)
        return next((m for m in children if of(m) == wanted), None) or \
            next((m for m in children if of(m) == ("linux", "amd64")), None) or (children[0] if children else None)


def parse_manifest(body: bytes | str) -> Manifest:
    """Parse and validate a manifest or index body; raises :class:`ManifestInvalid`."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestInvalid(f"manifest is not valid JSON: {exc}") from None
    except RecursionError:
        raise ManifestInvalid("manifest JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid("manifest must be a JSON object")
    for key in ("layers", "manifests"):
        if doc.get(key) is not None and not isinstance(doc[key], list):
            raise ManifestInvalid(f"manifest {key} must be a list of descriptors")
    subject = None
    if doc.get("subject") is not None:
        subject = Descriptor.from_json(doc["subject"])
        if subject is None:
            raise ManifestInvalid("manifest subject must be a descriptor with a valid digest")
    is_index = "manifests" in doc
    raw_children = list(doc.get("manifests") or [])
    raw_config = doc.get("config") if isinstance(doc.get("config"), dict) else None
    raw_layers = list(doc.get("layers") or [])
    config = None
    layers: list[Descriptor] = []
    if not is_index:
        # An image manifest's blobs must be real content: a bad digest is an error, not a skip.
        for raw in [raw_config, *raw_layers]:
            if not isinstance(raw, dict):
                continue
            desc = Descriptor.from_json(raw)
            if desc is None and not raw.get("urls"):
                raise ManifestInvalid(f"manifest descriptor has an invalid digest: {str(raw.get('digest'))[:200]!r}")
            if desc is not None:
                config, layers = (desc, layers) if raw is raw_config else (config, [*layers, desc])
    artifact_type = doc.get("artifactType")
    if artifact_type is None and raw_config is not None and not is_index:
        # OCI 1.1: for an image manifest without artifactType, the config media type stands in.
        artifact_type = raw_config.get("mediaType")
    annotations = doc.get("annotations")
    return Manifest(
        doc=doc,
        media_type=doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else None,
        config=config,
        layers=tuple(layers),
        manifests=tuple(d for d in map(Descriptor.from_json, raw_children) if d is not None),
        subject=subject,
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
        annotations=annotations if isinstance(annotations, dict) and annotations else None,
        is_index=is_index,
        _raw={"manifests": raw_children, "blobs": ([raw_config] if raw_config is not None else []) + raw_layers},
    )


def dumps_manifest(doc: Mapping[str, Any]) -> bytes:
    """Compact, key-sorted JSON: equal documents written by envcache are equal bytes (digests)."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def image_manifest(config: bytes, layers: list[Descriptor], annotations: Mapping[str, str]) -> bytes:
    """An OCI image manifest over ``config`` (stored byte for byte) and ``layers``."""
    return dumps_manifest({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_bytes(config), "size": len(config)},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size} for layer in layers],
        "annotations": dict(annotations),
    })


def artifact_manifest(artifact_type: str, blobs: list[Descriptor], annotations: Mapping[str, str]) -> bytes:
    """An OCI 1.1 artifact: ``artifactType``, the empty config (its bytes inline, as ``data``) and
    ``blobs`` as layers, each with its annotations (``org.opencontainers.image.title`` names the
    file ``oras pull`` writes). No timestamp, so equal content is an equal digest everywhere."""
    return dumps_manifest({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": OCI_EMPTY, "digest": digest_bytes(EMPTY_JSON), "size": len(EMPTY_JSON),
                   "data": base64.b64encode(EMPTY_JSON).decode()},
        "layers": [blob.to_json() for blob in blobs],
        "annotations": dict(annotations),
    })


def image_index(entries: list[Descriptor]) -> bytes:
    """An OCI image index over ``entries`` (platform and annotations kept)."""
    return dumps_manifest({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [e.to_json() for e in entries]})


def layer_compression(manifest: Manifest) -> str:
    """How an image's layers are compressed: ``gzip`` (OCI's ``+gzip`` and Docker's ``.gzip``),
    ``zstd``, ``none``, or ``mixed``; ``""`` for an image without layers. What a client must be
    able to read to pull it (Docker before 23.0 reads no zstd)."""
    kinds = {"gzip" if t.endswith("gzip") else "zstd" if t.endswith("zstd") else "none"
             for t in (layer.media_type or "" for layer in manifest.layers)}
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "")


def platform_of_config(config: bytes) -> dict[str, str]:
    """The platform an image config declares (amd64/linux when it says nothing)."""
    data = json.loads(config)
    found = {"architecture": data.get("architecture") or "amd64", "os": data.get("os") or "linux"}
    if data.get("variant"):
        found["variant"] = data["variant"]
    return found


def host_platform() -> tuple[str, str]:
    machine = _platform.machine().lower()
    return "linux", {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


async def config_digest(body: bytes, fetch: Callable[[str], Awaitable[bytes | None]]) -> str | None:
    """The image's config digest from its manifest (through an index, for the host platform).

    The config digest is what an engine calls the image id, and it does not depend on how the
    layers were compressed: every machine — one that builds, one that only pulls — computes the
    same image key from it. ``fetch(digest)`` returns a child manifest's body (or None).
    """
    manifest = parse_manifest(body)
    if manifest.media_type in INDEX_TYPES or manifest.is_index:
        chosen = manifest.platform_child()
        if chosen is None:
            return None
        child = await fetch(chosen.digest)
        if child is None:
            return None
        manifest = parse_manifest(child)
    return manifest.config.digest if manifest.config is not None else None
