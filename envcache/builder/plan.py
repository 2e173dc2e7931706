"""A build request prepared once: the variant applied, the canonical bytes and spec hash, the
base image named and resolved, the image key.

The daemon's ensure prepares it (it must, to look the key up) and hands the very same plan to the
builder and the upstream tier, so nothing downstream applies the variant, hashes or picks the
base again.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import xxhash

from envcache.builder.keys import RECIPE_VERSION, image_key
from envcache.definition.canonical import canonical_bytes, spec_hash
from envcache.definition.model import Definition, Variant
from envcache.definition.variants import base_login, base_of, for_variant, resolve_variant
from envcache.oci import RegistryLogin, normalise_reference


@dataclass(frozen=True)
class BuildPlan:
    source: Definition            # the definition as given (with its variants)
    definition: Definition        # as built for ``variant``: its overrides applied
    variant: Variant
    canonical: bytes              # canonical form of ``definition``
    spec_hash: str                # xxh3-128 of ``canonical``
    base_name: str | None         # the image the build starts FROM (None: no base known)
    base_digest: str = ""         # what ``base_reference`` resolved to; "" when nobody resolved it
    key: str = ""                 # the image key
    # The definition's login for the base's registry: used to resolve and pull the base, never
    # hashed, shown or stored.
    login: RegistryLogin | None = field(default=None, repr=False, compare=False)
    refresh: bool = False         # resolve the unpinned packages again instead of installing the lock

    @classmethod
    def of(cls, definition: Definition, variant: str, *, default_base: str | None = None, key: str = "") -> BuildPlan:
        """Apply ``variant``, canonicalise, name the base (``default_base``: the daemon's base
        for the variant, when the definition names none)."""
        chosen = resolve_variant(variant)
        view = for_variant(definition, chosen)
        canonical = canonical_bytes(view)
        base = base_of(view, default_base)
        return cls(definition, view, chosen, canonical, xxhash.xxh3_128_hexdigest(canonical), base, key=key,
                   login=base_login(view, base))

    @property
    def base_reference(self) -> str | None:
        """The base's normal spelling, what resolvers are asked (``scratch`` stays ``scratch``)."""
        if self.base_name is None:
            return None
        return "scratch" if self.base_name.lower() == "scratch" else normalise_reference(self.base_name)

    def resolved(self, base_digest: str, recipe_version: str | int = RECIPE_VERSION) -> BuildPlan:
        """The plan with its base resolved and, from that, its image key."""
        return replace(self, base_digest=base_digest,
                       key=image_key(self.spec_hash, self.variant, base_digest, recipe_version))

    @functools.cached_property
    def index_tag(self) -> str:
        """The definition's own spec hash: its image index over the variants is tagged with it."""
        return spec_hash(self.source)
