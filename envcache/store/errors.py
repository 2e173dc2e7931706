"""What the store refuses: content that is not what it claims, manifests over missing blobs."""

from __future__ import annotations

from envcache.errors import InvalidInput


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



def check_content(digest: str, size: int, expected_digest: str | None, expected_size: int | None) -> None:
    """Raise when content is not what the caller said it would be."""
    if expected_size is not None and size != expected_size:
        raise SizeMismatch(f"content is {size} bytes, expected {expected_size}", received=size)
    if expected_digest is not None and digest != expected_digest:
        raise DigestMismatch(f"content digest is {digest}, expected {expected_digest}")
