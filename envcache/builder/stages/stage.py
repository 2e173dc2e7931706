"""What every stage kind provides, and what its recipe is written against."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from envcache.builder.engines.base import ImageInfo, LogFn
from envcache.builder.helper import HelperServer
from envcache.builder.keys import SOURCE_DATE_EPOCH
from envcache.definition.model import Definition, Variant

if TYPE_CHECKING:
    from envcache.builder.engines.base import Engine

#: Where each stage writes what it installed (its part of the lock), inside the image.
LOCK_DIR = "/opt/envcache/lock"
#: The same moment as SOURCE_DATE_EPOCH, as an image config writes times (``created``, history).
CREATED = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(SOURCE_DATE_EPOCH))

#: One package of a stage's part of the lock (see :mod:`envcache.builder.lock`).
Entry = dict[str, Any]

#: A local file holding the wheel with this digest, or None when the store has none.
WheelFile = Callable[[str], Awaitable[Path | None]]


@dataclass
class StageRecipe:
    """What the engine needs to build one stage (the context directory holds the rest).

    ``after`` runs once the engine has built it: it checks the result (a pip stage installed
    exactly its lock) and returns annotations for the stored stage image."""

    dockerfile: str
    network: bool = False
    after: Callable[[], dict[str, str]] | None = None
    #: Generated text → what the build log shows instead (the engine echoes each step, and a
    #: generated script is long and carries the build helper's URL and token).
    display: dict[str, str] = field(default_factory=dict)


@dataclass
class RecipeContext:
    """What a stage's resolution and recipe are written against."""

    parent: str                        # the image to build FROM: the previous stage, or the base
    parent_info: ImageInfo | None      # that image's config (its env, its id)
    directory: Path                    # the build context to fill (files the Dockerfile COPYs)
    variant: Variant
    has_conda: bool = False            # the chain installs a conda prefix (PATH, CONDA_PREFIX)
    helper: HelperServer | None = None  # serves build-time secrets (pip) over loopback
    ca_bundle: Path | None = None       # the host's CA bundle, handed to pip only
    part: list[Entry] = field(default_factory=list)  # the lock part to install, exactly
    engine: Engine | None = None        # runs a resolution inside the parent image (pip)
    log: LogFn = print
    wheel_file: WheelFile | None = None  # pinned private wheels the store holds (pip)


class Stage:
    """One kind of stage for one (variant-applied) definition."""

    kind: ClassVar[str]
    #: The file under :data:`LOCK_DIR` this stage writes, if any.
    lock_file: ClassVar[str | None] = None
    #: Whether the recipe reads the parent image's config (``RecipeContext.parent_info``).
    inspects_parent: ClassVar[bool] = False
    #: Whether the stage resolves packages: it then has a part of the lock, which its key covers.
    resolves: ClassVar[bool] = False
    #: Whether resolving runs inside the parent image (which must then be in the engine).
    resolves_in_image: ClassVar[bool] = False

    def __init__(self, view: Definition) -> None:
        self.view = view

    def applies(self) -> bool:
        """Whether this definition has anything for this stage to do."""
        return True

    def content(self) -> dict[str, Any]:
        """The canonical content this stage's key is computed from."""
        raise NotImplementedError

    async def resolve(self, ctx: RecipeContext) -> list[Entry]:
        """Resolve the stage's packages as of now: its part of the lock (``resolves`` stages)."""
        raise NotImplementedError

    async def recipe(self, ctx: RecipeContext) -> StageRecipe:
        """The Dockerfile (and context files) that build this stage on ``ctx.parent``,
        installing exactly ``ctx.part``."""
        raise NotImplementedError
