"""What a stored manifest points at: the one place gc, fsck and blob deletion read references."""

from __future__ import annotations

from dataclasses import dataclass, field

from envcache.oci import parse_manifest


@dataclass
class ManifestRefs:
    """What one manifest points at: child manifests (of an index) and blobs (config, layers)."""

    children: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)  # the blobs but the config (gc's size cap matches stages by them)
    media_types: dict[str, str] = field(default_factory=dict)  # blob digest → descriptor media type


def manifest_refs(body: bytes) -> ManifestRefs:
    """A stored manifest or index body's references; raises InvalidInput when it is not one."""
    manifest = parse_manifest(body)
    if manifest.is_index:
        return ManifestRefs(children=[child.digest for child in manifest.manifests])
    blobs = manifest.blobs
    return ManifestRefs(blobs=[d.digest for d in blobs], layers=manifest.layer_digests,
                        media_types={d.digest: d.media_type for d in blobs if d.media_type is not None})
