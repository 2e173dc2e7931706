"""The plain records the store's interfaces exchange (no behaviour, no storage details)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StoredManifest:
    """A manifest as stored in one repository; ``body`` is empty when it was not asked for."""

    digest: str
    media_type: str
    body: bytes
    size: int = 0
    subject: str | None = None


@dataclass(frozen=True)
class ManifestRow:
    """A manifest's index entry (what gc and fsck walk). ``gen`` counts its uses (pushes, tags);
    ``last_used`` is the latest of them (``created`` for one never used again)."""

    repository: str
    digest: str
    media_type: str
    size: int
    subject: str | None
    created: float
    gen: int = 0
    last_used: float = 0.0


@dataclass(frozen=True)
class BlobRow:
    """A blob's index entry: size, media type (from the manifests that name it), when it was
    created and last used or read (gc keeps anything touched within its grace period), and its
    generation ``gen``, bumped by every use (gc deletes the row only if it did not change)."""

    digest: str
    size: int
    media_type: str | None
    created: float
    last_access: float
    gen: int = 0


@dataclass(frozen=True)
class StagedBlob:
    """Verified, durable bytes that are not visible yet: what a blob driver's ``stage*`` methods
    return and its ``publish`` makes visible. ``key`` is where the driver holds them (a temp
    file, an upload's spool file, an object key); ``data`` holds small content in memory
    instead; ``handle`` is the driver's claim on the key while it is staged (the writer's flock
    on a temp file), released by ``discard``."""

    digest: str
    size: int
    key: str = ""
    data: bytes | None = None
    handle: int = -1


@dataclass(frozen=True)
class FileEntry:
    """An object in blob storage, a temp area or the upload spool: ``digest`` is None for a name
    that is no blob; ``modified`` is the latest write or rename (gc's notion of age)."""

    key: str
    size: int
    modified: float
    digest: str | None = None


@dataclass(frozen=True)
class UploadSession:
    id: str
    repository: str
    offset: int
    created: float
    updated: float


@dataclass(frozen=True)
class StoredImage:
    """One row of the image index: what an image key is filed under."""

    key: str
    variant: str
    spec_hash: str
    canonical: bytes | None
    repository: str
    tag: str
    manifest_digest: str
    size: int
    created: float
    last_used: float
    lock: dict[str, Any] = field(default_factory=dict)
    base_digest: str = ""
    recipe_version: str = ""
    compression: str = ""          # of its layers: gzip | zstd | none | mixed ("" = not recorded)
    pinned: bool = False  # kept by gc whatever its age or the size cap (``envcache images pin``)


@dataclass(frozen=True)
class ReplacedImage:
    """An image a key was filed under before a refresh moved the key to a new one."""

    key: str
    variant: str
    repository: str
    tag: str
    manifest_digest: str
    size: int
    created: float
    replaced: float
    lock: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepResult:
    """A pipeline step's stored result: filed under its step key, kept as the OCI artifact
    ``envcache/step:<key>`` (``manifest_digest``). ``outputs`` maps each output name to its tree
    digest (what downstream keys hash) and the digest of its tar layer (what is materialised)."""

    key: str
    step: str
    manifest_digest: str
    outputs: dict[str, tuple[str, str]]
    created: float
    last_used: float


@dataclass(frozen=True)
class BuildRecord:
    """A build as persisted: its final state and log once it has ended."""

    id: str
    key: str
    variant: str
    spec_hash: str
    env_name: str | None
    env_version: int | None
    state: str
    created: float
    started: float | None
    finished: float | None
    error: str | None
    log: str | None


@dataclass(frozen=True)
class EnvironmentVersion:
    name: str
    version: int
    spec_hash: str
    definition: dict[str, Any]
    created: float


@dataclass(frozen=True)
class KnownLayer:
    """An uncompressed layer (diff_id) already stored as a blob in one compression."""

    diff_id: str
    compression: str
    blob_digest: str
    size: int


@dataclass(frozen=True)
class WheelRecord:
    """A private wheel uploaded to the daemon: its blob digest and what the wheel says it is."""

    digest: str                    # sha256:<hex> of the file
    filename: str
    name: str                      # PEP 503 normalised project name
    version: str
    tags: tuple[str, ...]          # compatibility tags, e.g. ("py3-none-any",)
    requires_python: str | None
    summary: str | None
    size: int
    created: float
