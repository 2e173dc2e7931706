"""Repository-name and tag grammar (distribution spec), and envcache's own image tag format.

Names are checked before they reach a storage backend or a URL we build, so ``../x``, upper
case and other strings the spec forbids are refused with ``NAME_INVALID`` / ``TAG_INVALID``
up front. ``fullmatch`` throughout: a trailing newline is not part of any valid name.
"""

from __future__ import annotations

import re

from envcache.errors import InvalidInput

COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY = rf"{COMPONENT}(?:/{COMPONENT})*"
TAG = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
_NAME_RE = re.compile(REPOSITORY)
_TAG_RE = re.compile(TAG)
# distribution caps the whole name at 255 characters; clients (docker) do the same.
MAX_NAME_LENGTH = 255


class NameInvalid(InvalidInput):
    """A repository name outside the spec's grammar."""


class TagInvalid(InvalidInput):
    """A tag outside the spec's grammar."""


def check_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not _NAME_RE.fullmatch(name):
        raise NameInvalid(
            f"invalid repository name {name[:300]!r}: lower-case path components of [a-z0-9] "
            "separated by '.', '_', '__' or '-', joined by '/', at most 255 characters"
        )
    return name


def check_tag(tag: str) -> str:
    if not _TAG_RE.fullmatch(tag):
        raise TagInvalid(f"invalid tag {tag[:300]!r}: must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")
    return tag


#: Where envcache files the images it builds or pulls (tag: :func:`image_tag`), and the image
#: index over a definition's variants (tag: its spec hash).
ENV_REPOSITORY = "envcache/env"
#: Where envcache keeps each built stage (tag: its chain key), so other machines reuse prefixes.
STAGE_REPOSITORY = "envcache/stage"
#: Where envcache keeps each image's lock as an OCI artifact (tag: the image's), whose subject is
#: the image: it outlives the image (gc), and travels to and from upstreams on its own.
LOCK_REPOSITORY = "envcache/lock"
#: Where envcache keeps each private wheel as an artifact (tag: the wheel's sha256 hex), so push
#: and pull carry wheels like images and any OCI client can fetch one.
WHEEL_REPOSITORY = "envcache/wheel"


def image_tag(key: str, variant: str) -> str:
    """The tag an image key is filed under: ``envcache/env:<image key>-<variant>`` (DESIGN.md)."""
    return f"{key}-{variant}"


def parse_image_tag(tag: str) -> tuple[str, str | None]:
    """``<key>-<variant>`` → ``(key, variant)``; a bare key → ``(key, None)``.

    Image keys are hex, so the variant is whatever follows the last ``-``; callers check it
    against the variants they know.
    """
    key, sep, variant = tag.rpartition("-")
    return (key, variant) if sep and key and variant else (tag, None)
