"""Every key envcache derives, in one place: the image key and the stage chain's keys.

An image key names *what was built*, not what was asked for: the spec hash says which
environment, but the same definition on top of a base tag that has moved (``ubuntu:22.04``
re-published with security fixes) is a different image. So the key also carries the base
image's resolved digest and the recipe version. A stage's chain key is
``xxh3-128(parent key, stage kind, canonical content of the stage)`` starting from the root
key (the base image as the engine has it, and the recipe), so two environments that share a
base and conda packages share those stages even when their pip lists differ.
"""

from __future__ import annotations

import json
from typing import Any

import xxhash

from envcache.definition.canonical import dumps_canonical

#: Bumped whenever the generated Dockerfiles or stage procedures change what gets built: it is
#: part of every root key (and so of every stage and image key).
RECIPE_VERSION = 2
#: Every path a build step writes gets this mtime, and every config this ``created``
#: (SOURCE_DATE_EPOCH, 1980-01-01T00:00:00Z): a constant of the recipe, never the clock, so the
#: same key and lock give the same bytes. (1980: the earliest time a zip file can hold, so tools
#: that zip what they find keep working.)
SOURCE_DATE_EPOCH = 315532800


def image_key(spec_hash: str, variant: str, base_digest: str, recipe_version: str | int = RECIPE_VERSION) -> str:
    """The key an image is filed under: xxh3-128 over the four things that decide its content.

    JSON of a list (not string concatenation) so no two different tuples can serialise alike.
    """
    payload = json.dumps([spec_hash, variant, base_digest, str(recipe_version)], separators=(",", ":"))
    return xxhash.xxh3_128_hexdigest(payload.encode())


def root_key(base_digest: str) -> str:
    """The chain root: the resolved base image and the recipe that builds on it."""
    return xxhash.xxh3_128_hexdigest(json.dumps([base_digest, RECIPE_VERSION]).encode())


def chain_key(parent: str, kind: str, content: dict[str, Any]) -> str:
    """A stage's key: its parent's key, its kind and its canonical content."""
    return xxhash.xxh3_128_hexdigest(f"{parent}\n{kind}\n".encode() + dumps_canonical(content))
