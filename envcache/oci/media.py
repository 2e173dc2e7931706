"""Media types and size limits, each written once."""

from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
#: The empty descriptor's media type (OCI 1.1): the config of an artifact that has none (``{}``).
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
#: OCI 1.1's empty descriptor (the config of an artifact that has none): the two bytes ``{}``.
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
#: A private wheel as an OCI artifact (``envcache/wheel:<sha256 hex>``): one layer, the wheel file.
WHEEL_ARTIFACT = "application/vnd.envcache.wheel.v1"
WHEEL_MEDIA = "application/vnd.envcache.wheel.v1+zip"

#: Documents that list other manifests (one per platform).
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
#: Documents that describe one image: a config and layers.
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
#: What envcache asks a registry for: both families, indexes first.
ACCEPT_MANIFESTS = ", ".join(INDEX_TYPES + MANIFEST_TYPES)

#: Layer media type per compression envcache writes (zstd is smaller and faster; gzip is what
#: Docker before 23.0 can pull).
LAYER_MEDIA = {
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
}

#: The distribution spec lets registries refuse manifests above 4 MiB; clients expect at least that.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
