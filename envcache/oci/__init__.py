"""One OCI vocabulary for all of envcache: media types, digests, names, descriptors, manifests,
image references and envcache's tag format.

Modelled on CNCF distribution's own split (``reference``, ``go-digest``, ``manifest``): every
other package speaks these types instead of re-parsing JSON or re-writing regular expressions,
so the registry, the store, gc, the builder and the upstream client cannot disagree about what
a digest, a tag or a manifest is. Pure and cheap: no I/O, standard library only.
"""

from envcache.oci.digest import DigestError, digest_bytes, is_digest, new_hasher, parse_digest
from envcache.oci.login import RegistryLogin
from envcache.oci.manifest import (
    Descriptor, Manifest, ManifestInvalid, artifact_manifest, config_digest, dumps_manifest, image_index,
    image_manifest, layer_compression, parse_manifest, platform_of_config,
)
from envcache.oci.media import (
    ACCEPT_MANIFESTS, DOCKER_LIST, DOCKER_MANIFEST, EMPTY_JSON, INDEX_TYPES, LAYER_MEDIA, MANIFEST_TYPES,
    MAX_MANIFEST_SIZE, OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, WHEEL_ARTIFACT, WHEEL_MEDIA,
)
from envcache.oci.names import (
    ENV_REPOSITORY, LOCK_REPOSITORY, STAGE_REPOSITORY, WHEEL_REPOSITORY, NameInvalid, TagInvalid, check_name,
    check_tag, image_tag, parse_image_tag,
)
from envcache.oci.reference import (
    DOCKER_HUB_HOSTS, ImageRef, ReferenceInvalid, is_registry_host, names_registry, normalise_reference, parse_reference,
    registry_host,
)

__all__ = [
    "ACCEPT_MANIFESTS", "DOCKER_HUB_HOSTS", "DOCKER_LIST", "DOCKER_MANIFEST", "EMPTY_JSON", "ENV_REPOSITORY",
    "INDEX_TYPES", "LAYER_MEDIA", "LOCK_REPOSITORY", "STAGE_REPOSITORY", "WHEEL_ARTIFACT", "WHEEL_MEDIA",
    "WHEEL_REPOSITORY", "MANIFEST_TYPES", "MAX_MANIFEST_SIZE", "OCI_CONFIG", "OCI_EMPTY", "OCI_INDEX", "OCI_MANIFEST",
    "Descriptor", "DigestError", "ImageRef", "Manifest", "ManifestInvalid", "NameInvalid", "ReferenceInvalid",
    "RegistryLogin", "TagInvalid", "artifact_manifest", "check_name", "check_tag", "config_digest", "digest_bytes",
    "dumps_manifest", "image_index", "image_manifest", "image_tag", "is_digest", "is_registry_host",
    "layer_compression", "names_registry", "new_hasher",
    "normalise_reference", "parse_digest", "parse_image_tag", "parse_manifest", "parse_reference", "platform_of_config",
    "registry_host",
]
