"""What every stage kind provides, and what its recipe is written against."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from envcache.builder.engines.base import ImageInfo
from envcache.builder.helper import HelperServer
from envcache.definition.model import Definition, Variant
from envcache.errors import InvalidInput

#: Where each stage writes what it installed (read back by ingest as the image's lock).
LOCK_DIR = "/opt/envcache/lock"

#: A local file holding the wheel with this digest, or None when the store has none.
WheelFile = Callable[[str], Awaitable[Path | None]]


@dataclass
class StageRecipe:
    """What the engine needs to build one stage (the context directory holds the rest)."""

    dockerfile: str
    network: bool = False
    #: Generated text → what the build log shows instead (the engine echoes each step, and a
    #: generated script is long and carries the build helper's URL and token).
    display: dict[str, str] = field(default_factory=dict)


@dataclass
class RecipeContext:
    """What a stage's recipe is written against."""

    parent: str                        # the image to build FROM: the previous stage, or the base
    parent_info: ImageInfo | None      # that image as the engine has it (its env, its id)
    directory: Path                    # the build context to fill (files the Dockerfile COPYs)
    variant: Variant
    has_conda: bool = False            # the chain installs a conda prefix (PATH, CONDA_PREFIX)
    helper: HelperServer | None = None  # serves build-time secrets (pip) over loopback
    ca_bundle: Path | None = None       # the host's CA bundle, handed to pip only
    wheel_file: WheelFile | None = None  # pinned private wheels the store holds (pip)


class Stage:
    """One kind of stage for one (variant-applied) definition."""

    kind: ClassVar[str]
    #: The file under :data:`LOCK_DIR` this stage writes, if any.
    lock_file: ClassVar[str | None] = None
    #: Whether the recipe reads the parent image's config (``RecipeContext.parent_info``).
    inspects_parent: ClassVar[bool] = False

    def __init__(self, view: Definition) -> None:
        self.view = view

    def applies(self) -> bool:
        """Whether this definition has anything for this stage to do."""
        return True

    def content(self) -> dict[str, Any]:
        """The canonical content this stage's key is computed from."""
        raise NotImplementedError

    async def recipe(self, ctx: RecipeContext) -> StageRecipe:
        """The Dockerfile (and context files) that build this stage on ``ctx.parent``."""
        raise NotImplementedError

    def unpinned(self) -> list[str]:
        """Requirements whose resolution can drift (the lock records what they resolved to)."""
        return []


def quote(value: str) -> str:
    """A Dockerfile ENV/LABEL value: double-quoted, with ``$`` not expanded."""
    if "\n" in value or "\r" in value:
        raise InvalidInput(f"environment variable or label value {value[:40]!r} contains a line break")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'
