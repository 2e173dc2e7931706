"""Which base image each variant uses when a definition names none (the daemon's setting)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from envcache.errors import InvalidInput

if TYPE_CHECKING:
    from envcache.service.config import Config


def variant_base_image(config: Config, variant: str) -> str:
    """The daemon's base image for ``variant`` (``[variants.<variant>]`` in the config)."""
    entry = config.variants.get(variant)
    if entry is None:
        raise InvalidInput(f"the definition names no base image and the daemon config has no "
                           f"[variants.{variant}] base_image; set one of them")
    return entry.base_image
