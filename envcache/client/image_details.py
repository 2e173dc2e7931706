"""What the facade's daemon calls hand back: Azure's ``DockerImageDetails`` (an image) and
``ImageBuildDetails`` (a build to follow), filled from the daemon's image and build documents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from envcache.client.sync import Client

# The daemon's build states as Azure spells its image build statuses.
_STATUS = {"queued": "Queued", "running": "Running", "succeeded": "Succeeded", "failed": "Failed"}


class DockerImageDetails(dict[str, Any]):
    """Azure's ``DockerImageDetails``: a dict with Azure's keys (``imageExistsInRegistry``,
    ``dockerImage.name``, ``dockerImage.registry.address``, ``pythonEnvironment.interpreterPath``)
    beside the daemon's own image document (``key``, ``digest``, ``image``, ``lock`` …).

    ``environment_path`` and ``dockerfile`` are None: an envcache image is built in stages, with
    no single Dockerfile, and the daemon does not report a conda prefix.
    """

    @classmethod
    def of(cls, image: dict[str, Any] | None, interpreter_path: str) -> DockerImageDetails:
        """From the daemon's image document; ``None`` (not cached) gives ``imageExistsInRegistry: False``."""
        python = {"interpreterPath": interpreter_path}
        if image is None:
            return cls(imageExistsInRegistry=False, dockerImage=None, pythonEnvironment=python)
        host, _, name = image["image"].partition("/")
        return cls({**image, "imageExistsInRegistry": True, "pythonEnvironment": python,
                    "dockerImage": {"name": name, "registry": {"address": host}, "digest": image["digest"]}})

    @property
    def image_exist(self) -> bool:
        return bool(self.get("imageExistsInRegistry"))

    @property
    def repository(self) -> str | None:
        return (self.get("dockerImage") or {}).get("name")

    @property
    def registry(self) -> str | None:
        return ((self.get("dockerImage") or {}).get("registry") or {}).get("address")

    @property
    def image(self) -> str | None:
        """The full reference to pull (``host:port/envcache/env:<key>-<variant>``)."""
        if self.repository is None:
            return None
        return self.repository if self.registry is None else f"{self.registry}/{self.repository}"

    @property
    def interpreter_path(self) -> str | None:
        return (self.get("pythonEnvironment") or {}).get("interpreterPath")

    @property
    def environment_path(self) -> None:
        return None

    @property
    def dockerfile(self) -> None:
        return None


class ImageBuildDetails:
    """What ``Environment.build`` returns, as in Azure: ``status``, ``get_log()`` and
    ``wait_for_completion(show_output=True)``, which returns this object whatever the outcome
    (check ``status``; ``error`` says why a build failed). ``image_details`` is the image's
    :class:`DockerImageDetails` once it exists. A cache hit is ``Succeeded`` at once.
    """

    def __init__(self, client: Client, answer: dict[str, Any], interpreter_path: str) -> None:
        self._client = client
        self._interpreter_path = interpreter_path
        build = answer.get("build")
        self.build_id: str | None = build["id"] if build else None
        self._state: str = build["state"] if build else "succeeded"
        self.error: str | None = None
        image = answer.get("image")
        self.image_details = DockerImageDetails.of(image, interpreter_path) if image else None

    def _update(self, build: dict[str, Any]) -> None:
        self._state, self.error = build["state"], build.get("error")
        if build.get("image"):
            self.image_details = DockerImageDetails.of(build["image"], self._interpreter_path)

    @property
    def status(self) -> str:
        """``Queued``, ``Running``, ``Succeeded`` or ``Failed`` (asked of the daemon while unfinished)."""
        if self.build_id is not None and self._state in ("queued", "running"):
            self._update(self._client.build(self.build_id))
        return _STATUS.get(self._state, self._state.title())

    def get_log(self) -> str:
        """The build log so far (empty for a cache hit: nothing was built)."""
        if self.build_id is None:
            return ""
        return "\n".join(self._client.build_log(self.build_id, follow=False))

    def wait_for_completion(self, show_output: bool = True) -> ImageBuildDetails:
        """Block until the build ends, printing its log as it is written when ``show_output``."""
        if self.build_id is not None:
            on_log = (lambda line: print(line, flush=True)) if show_output else None
            self._update(self._client.follow_build(self.build_id, on_log=on_log))
        if show_output:
            where = f" ({self.image_details.image})" if self.image_details is not None else ""
            print(f"Image Build Status: {self.status}{where}" + (f": {self.error}" if self.error else ""), flush=True)
        return self
