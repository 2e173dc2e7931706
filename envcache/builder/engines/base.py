"""What the builder needs from a container engine, whichever engine it is.

The builder only ever asks an engine to: say whether an image is present (and its id and
config), pull a base image, build one generated Dockerfile from a context directory under a
tag, export an image for ingest, and drop a tag. Keeping the surface this small is what lets the
Docker Engine API and daemonless buildah sit behind one interface.
"""

from __future__ import annotations

import collections
import io
import re
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from envcache.builder.errors import BuildFailed, EngineUnavailable
from envcache.oci import RegistryLogin

LogFn = Callable[[str], None]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

#: Lines of output kept for a failure message.
TAIL_LINES = 30


@dataclass
class ImageInfo:
    """An image present in the engine: its id (``sha256:…``, the config digest) and its
    runtime config (``Env``, ``Labels``, ``Cmd``…)."""

    id: str
    config: dict[str, Any] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        pairs = (item.split("=", 1) for item in self.config.get("Env") or [] if "=" in item)
        return {key: value for key, value in pairs}


@dataclass(frozen=True)
class Mount:
    """A host directory seen inside a container run (``Engine.run``)."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class RunResult:
    """How a container run ended: its exit code and the last lines of its output."""

    exit_code: int
    log_tail: str


@dataclass
class ExportedImage:
    """An image written out for ingest: a ``docker save`` tar or an OCI layout directory whose
    layers are uncompressed tars."""

    format: Literal["docker-archive", "oci"]
    path: Path


class LogTail:
    """Forwards each complete output line to the caller's log and keeps the last lines for an
    error message. Engines hand over chunks that may end mid-line; ``feed`` joins them.

    ``display`` replaces generated text (a stage's script, the build helper's URL) before a line
    is logged or kept, so neither the log nor an error message ever shows it.
    """

    def __init__(self, log: LogFn, display: dict[str, str] | None = None) -> None:
        self._log = log
        self._display = display or {}
        self._partial = ""
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def feed(self, text: str) -> None:
        text = self._partial + text.replace("\r\n", "\n")
        *complete, self._partial = text.split("\n")
        for line in complete:
            self.line(line)

    def line(self, line: str) -> None:
        line = _ANSI.sub("", line).rstrip()
        for text, shown in self._display.items():
            line = line.replace(text, shown)
        self.lines.append(line)
        self._log(line)

    def flush(self) -> None:
        if self._partial:
            self.line(self._partial)
            self._partial = ""

    def text(self) -> str:
        self.flush()
        return "\n".join(self.lines)


def context_tar(context_dir: Path) -> bytes:
    """The build context as an uncompressed tar, with owner and mtimes normalised so two
    contexts with equal content give equal ``COPY`` layers."""

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(context_dir.iterdir()):
            tar.add(path, arcname=path.name, filter=normalise)
    return buffer.getvalue()


class Engine(ABC):
    """A container engine the builder drives."""

    name: str

    @abstractmethod
    async def version(self) -> str:
        """The engine's version; raises EngineUnavailable, saying what to do, when it does not answer."""

    @abstractmethod
    async def inspect(self, ref: str) -> ImageInfo | None:
        """The image ``ref`` if present locally, else None (never pulls)."""

    @abstractmethod
    async def pull(self, ref: str, log: LogFn, login: RegistryLogin | None = None) -> ImageInfo:
        """Fetch ``ref`` into the engine, logging in with ``login`` when it is for ``ref``'s
        registry (the credentials never reach the log); raises BuildFailed(step="base") when it cannot."""

    @abstractmethod
    async def build(self, context_dir: Path, tag: str, *, network: bool,
                    log: LogFn, step: str, display: dict[str, str] | None = None) -> str:
        """Build ``context_dir/Dockerfile`` and tag it ``tag``; returns the image id.

        Output goes to ``log`` line by line (``display``: see :class:`LogTail`); a failure raises
        BuildFailed(step, log tail) and leaves ``tag`` untouched. Cancelling the awaiting task
        stops the build in the engine. ``network`` gives RUN steps the host network (package
        registries), else none.
        """

    @abstractmethod
    async def run(self, image: str, command: list[str], *, network: bool, log: LogFn, step: str) -> None:
        """Run ``command`` in a throw-away container of ``image`` (removed afterwards, nothing
        committed); output goes to ``log`` line by line; a non-zero exit raises
        BuildFailed(step, log tail). What the command finds out, it reports back over the
        build's loopback helper (``network`` gives it the host network)."""

    @abstractmethod
    async def export(self, ref: str, dest_dir: Path) -> ExportedImage:
        """Write ``ref`` under ``dest_dir`` with uncompressed layers, for ingest."""

    async def export_many(self, refs: list[str], dest_dir: Path) -> dict[str, ExportedImage]:
        """Several images at once; engines that can share one archive (Docker) override this."""
        exported: dict[str, ExportedImage] = {}
        for index, ref in enumerate(refs):
            target = dest_dir / f"export-{index}"
            target.mkdir()
            exported[ref] = await self.export(ref, target)
        return exported

    @abstractmethod
    async def load(self, archive: Path, tag: str) -> None:
        """Import a ``docker save``-format archive and tag it ``tag``."""

    @abstractmethod
    async def tag(self, ref: str, tag: str) -> None:
        """Give the image ``ref`` (a name or an id) the name ``tag`` as well."""

    @abstractmethod
    async def remove(self, ref: str) -> None:
        """Drop the tag ``ref`` (the layers stay while other tags use them)."""

    async def run_mounted(self, image: str, argv: list[str], *, workdir: str, mounts: list[Mount],
                          env: dict[str, str], user: str | None, network: bool, labels: dict[str, str], log: LogFn,
                          timeout: float | None = None) -> RunResult:
        """Run ``argv`` in a fresh container of ``image`` with ``mounts`` (a pipeline step) and remove
        the container afterwards.

        Output goes to ``log`` line by line. ``network`` False means no network at all. The
        container is removed however the run ends — exit, ``timeout`` (raised as TimeoutError),
        or cancellation of the awaiting task — so a stopped pipeline leaves nothing running.
        """
        raise EngineUnavailable(f"the {self.name} engine cannot run containers")

    async def close(self) -> None:
        """Release connections."""

    async def _pulled(self, ref: str, tail: LogTail) -> ImageInfo:
        """``ref`` as the engine has it after a pull that reported success; shared by the
        engines so a pull that leaves nothing behind fails as a pull, not later as a build."""
        info = await self.inspect(ref)
        if info is None:
            raise BuildFailed("base", f"base image {ref} is not present after pulling it", tail.text())
        return info
