"""Repository-name and tag grammar from the OCI distribution spec.

Checked before a name reaches SQL or a URL we build, so ``../x``, upper case and other
strings the spec forbids are refused with ``NAME_INVALID`` / ``TAG_INVALID`` up front.
"""

from __future__ import annotations

import re

from envcache.errors import InvalidInput

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
# distribution caps the whole name at 255 characters; clients (docker) do the same.
MAX_NAME_LENGTH = 255


class NameInvalid(InvalidInput):
    """A repository name outside the spec's grammar."""


class TagInvalid(InvalidInput):
    """A tag outside the spec's grammar."""


def check_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.match(name):
        raise NameInvalid(
            f"invalid repository name {name[:300]!r}: lower-case path components of [a-z0-9] "
            "separated by '.', '_', '__' or '-', joined by '/', at most 255 characters"
        )
    return name


def check_tag(tag: str) -> str:
    if not TAG_RE.match(tag):
        raise TagInvalid(f"invalid tag {tag[:300]!r}: must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")
    return tag
