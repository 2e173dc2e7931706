"""What the store refuses: content that is not what it claims, manifests over missing blobs,
deleting what is in use, and writes the disk has no room for."""

from __future__ import annotations

from envcache.errors import EnvcacheError, InvalidInput

MB = 1024 * 1024


class DigestMismatch(InvalidInput):
    """Content did not hash to the digest the client named (OCI ``DIGEST_INVALID``)."""


class SizeMismatch(InvalidInput):
    """Content length differs from the size the client declared (OCI ``SIZE_INVALID``)."""

    def __init__(self, message: str, *, received: int | None = None) -> None:
        super().__init__(message)
        self.received = received


class ManifestBlobUnknown(InvalidInput):
    """An image manifest names a config or layer blob that was never pushed."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"manifest references blob {digest} which is not in the registry")
        self.digest = digest


class BlobInUse(EnvcacheError):
    """A blob a stored manifest names cannot be deleted: the image would break (zot answers the
    same way). Delete the manifests first; gc then removes the blob."""

    http_status = 405

    def __init__(self, digest: str, manifests: list[str]) -> None:
        named = ", ".join(manifests[:3]) + (f" and {len(manifests) - 3} more" if len(manifests) > 3 else "")
        super().__init__(f"blob {digest} is in use by manifest {named}; delete the manifest first")
        self.digest = digest


class InsufficientStorage(EnvcacheError):
    """The data directory's filesystem has no room for a new write (HTTP 507). Nothing was
    stored; reads, deletes and gc keep working, and gc is how the room comes back."""

    http_status = 507

    def __init__(self, free: int | None = None, floor: int = 0) -> None:
        state = ("the disk is full" if free is None else
                 f"{free // MB} MiB of disk space is free and {floor // MB} MiB stays in reserve so deletes and gc "
                 "always work")
        super().__init__(f"insufficient disk space: {state}; nothing was stored. Delete what is not needed and run "
                         "`envcache gc`, or give the data directory a larger disk")
        self.free = free


def check_content(digest: str, size: int, expected_digest: str | None, expected_size: int | None) -> None:
    """Raise when content is not what the caller said it would be."""
    if expected_size is not None and size != expected_size:
        raise SizeMismatch(f"content is {size} bytes, expected {expected_size}", received=size)
    if expected_digest is not None and digest != expected_digest:
        raise DigestMismatch(f"content digest is {digest}, expected {expected_digest}")
