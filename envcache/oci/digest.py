"""Content digests (``algorithm:hex``) as the OCI image spec defines them (go-digest's role).

Only sha256 and sha512 are accepted: they are the registered algorithms, and accepting anything
else would let a client name content nobody can verify. Validation happens here, before a digest
is ever turned into a storage key, so a digest can never smuggle ``/`` or ``..`` into a path.
"""

from __future__ import annotations

import hashlib
import re

from envcache.errors import InvalidInput

_LENGTHS = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"(sha256|sha512):([a-f0-9]+)")


class DigestError(InvalidInput):
    """A string that should have been a digest is not one we accept."""


def parse_digest(digest: str) -> tuple[str, str]:
    """Split and validate ``digest``; returns ``(algorithm, hex)`` or raises :class:`DigestError`."""
    match = _DIGEST.fullmatch(digest)
    if not match or len(match.group(2)) != _LENGTHS[match.group(1)]:
        raise DigestError(f"invalid digest {digest[:200]!r}: expected sha256:<64 hex> or sha512:<128 hex>")
    return match.group(1), match.group(2)


def is_digest(value: object) -> bool:
    """True when ``value`` is a digest we accept (how a digest reference is told from a tag)."""
    return isinstance(value, str) and (match := _DIGEST.fullmatch(value)) is not None \
        and len(match.group(2)) == _LENGTHS[match.group(1)]


def new_hasher(algorithm: str = "sha256") -> "hashlib._Hash":
    """A fresh hash object for ``algorithm`` (sha256 or sha512)."""
    return hashlib.new(algorithm)


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    """The digest of ``data`` in ``algorithm:hex`` form."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
