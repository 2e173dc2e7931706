"""Image references with Docker's normalisation (distribution's ``reference`` package).

``ubuntu`` → ``docker.io/library/ubuntu:latest``. One parser for every caller: the canonical
form hashes its normal spelling (so its rules are a compatibility promise), base-image
resolution and pull-through read its parts, and the pull-through copy is filed under
:attr:`ImageRef.local_repository`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from envcache.errors import InvalidInput
from envcache.oci.names import REPOSITORY, TAG

DOCKER_HUB = "docker.io"
#: Names of Docker Hub that all mean ``docker.io``.
DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?")
_PATH = re.compile(REPOSITORY)
_TAG = re.compile(TAG)
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")


class ReferenceInvalid(InvalidInput, ValueError):
    """Not an image reference. A ValueError too, so the definition loaders report it with a line."""


@dataclass(frozen=True)
class ImageRef:
    """A parsed, normalised image reference."""

    host: str            # registry host[:port]; docker.io for Docker Hub
    path: str            # repository path on that registry (library/ubuntu)
    tag: str | None
    digest: str | None

    @property
    def ref(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def is_loopback(self) -> bool:
        return self.host.rsplit(":", 1)[0] in ("127.0.0.1", "localhost", "[::1]")

    @property
    def local_repository(self) -> str:
        """Where a pulled-through copy lives in envcache's registry: the host in front (``:``
        becomes ``-``, which repository names cannot contain): ``127.0.0.1-5000/busybox``."""
        return f"{self.host.replace(':', '-')}/{self.path}"

    def __str__(self) -> str:
        return f"{self.host}/{self.path}" + (f":{self.tag}" if self.tag else "") + (
            f"@{self.digest}" if self.digest else "")


def names_registry(ref: str) -> bool:
    """Docker's rule: the first component names a registry host when it has a ``.`` or a ``:``,
    is ``localhost``, or has upper case (``team/base`` is a Docker Hub repository)."""
    first, slash, _ = ref.strip().partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost" or first != first.lower())


def registry_host(host: str) -> str:
    """A registry host's normal spelling: lower case, Docker Hub's aliases as ``docker.io``."""
    host = host.lower()
    return DOCKER_HUB if host in DOCKER_HUB_HOSTS else host


def is_registry_host(text: str) -> bool:
    """``host[:port]`` (a DNS name, an IPv4 or a bracketed IPv6 address), nothing else."""
    return _DOMAIN.fullmatch(text) is not None


@lru_cache(maxsize=1 << 16)
def parse_reference(text: str) -> ImageRef:
    """``text`` as an :class:`ImageRef`; raises :class:`ReferenceInvalid`. Memoised: the daemon
    sees the same few bases all day."""
    # The rules decide the canonical form's bytes: change them only with CANONICAL_VERSION.
    reference = text
    text = text.strip()
    name, _, digest = text.partition("@")
    if names_registry(name):
        first, _, path = name.partition("/")
        domain = registry_host(first)
    else:
        domain, path = DOCKER_HUB, name
    tag = None
    if ":" in path:
        path, tag = path.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise ReferenceInvalid(f"invalid image reference {reference!r}: bad tag {tag!r}")
    if not _DOMAIN.fullmatch(domain) or not _PATH.fullmatch(path):
        raise ReferenceInvalid(
            f"invalid image reference {reference!r} (repository names are lower-case, e.g. 'ubuntu:22.04')")
    if digest and not _DIGEST.fullmatch(digest):
        raise ReferenceInvalid(f"invalid image reference {reference!r}: bad digest {digest!r}")
    if domain == DOCKER_HUB and "/" not in path:
        path = "library/" + path
    if tag is None and not digest:
        tag = "latest"
    return ImageRef(domain, path, tag, digest.lower() if digest else None)


def normalise_reference(text: str) -> str:
    """The normal spelling of ``text``, or ``text`` stripped when it is not a plain reference
    (``FROM $BASE``): no resolver knows such a name, which ends in a clear error later."""
    try:
        return str(parse_reference(text))
    except ReferenceInvalid:
        return text.strip()
