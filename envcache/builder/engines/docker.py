"""The Docker Engine API, through aiodocker.

Builds use the Engine's classic builder endpoint (``POST /build``) with a generated context tar:
one request per stage, its JSON progress stream turned into log lines. Leaving the request
(cancellation, timeout) closes the connection, which makes dockerd cancel the build and remove
its intermediate container. Anything that speaks the Docker Engine API works here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from envcache.builder.engines.base import (
    Engine, ExportedImage, ImageInfo, LogFn, LogTail, Mount, RunResult, context_tar,
)
from envcache.builder.errors import BuildFailed, EngineUnavailable
from envcache.oci import RegistryLogin, parse_reference

# Builds, saves and loads take as long as they take: the only time limit is the builder's
# per-stage one (cancelling the request stops the engine's work), not a socket timeout.
_UNLIMITED = aiohttp.ClientTimeout(total=None, sock_read=None)
_RUNNING_IN = re.compile(r"---> Running in ([0-9a-f]{12,64})")
#: aiodocker's status for "cannot connect to the Docker Engine" (no HTTP answer at all).
_CANNOT_CONNECT = 900
#: The classic builder's note about its temporary containers: noise in a build log.
_HOUSEKEEPING = re.compile(r"^Removing intermediate container [0-9a-f]+\n", re.MULTILINE)
_RUN_FAILED = re.compile(r"^The command .* returned a non-zero code: (\d+)$", re.DOTALL)


DEFAULT_HOST = "unix:///var/run/docker.sock"


def docker_endpoint(docker_host: str | None = None) -> str:
    """Where the Docker Engine is asked: ``[build] docker_host``, else ``DOCKER_HOST``, else the
    default socket — said explicitly, because aiodocker left to itself fails with a bare
    AssertionError when no socket exists."""
    return docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST


class DockerEngine(Engine):
    name = "docker"

    def __init__(self, docker_host: str | None = None) -> None:
        self.docker_host = docker_host
        self.endpoint = docker_endpoint(docker_host)
        self._docker: aiodocker.Docker | None = None

    @property
    def client(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.endpoint)
        return self._docker

    def unreachable(self, exc: BaseException) -> EngineUnavailable:
        """The clear form of aiodocker's ``DockerError: [900] Cannot connect …``."""
        socket = self.endpoint.removeprefix("unix://") if self.endpoint.startswith("unix://") else None
        why = "no such socket" if socket and not os.path.exists(socket) else str(getattr(exc, "message", exc))
        return EngineUnavailable(f"Docker Engine at {self.endpoint} does not answer ({why}): start dockerd, or "
                                 "point [build] docker_host (or DOCKER_HOST) at its socket")

    def _raw(self, path: str, method: str, **kwargs: Any) -> Any:
        """A request aiodocker's public API cannot express, on its own connection pool.

        WHY private: ``images.build`` has no ``networkmode`` (a stage needs ``host`` or
        ``none``) and ``images.export_image`` saves one name, while one ``docker save`` of the
        image and all its stages writes their shared layers once. These are the only two
        calls; everything else uses the public API.
        """
        return self.client._query(path, method, timeout=_UNLIMITED, **kwargs)

    async def version(self) -> str:
        try:
            data = await self.client.version()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise self.unreachable(exc) from exc
        return str(data.get("Version") or "unknown")

    async def inspect(self, ref: str) -> ImageInfo | None:
        try:
            data = await self.client.images.inspect(ref)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            if exc.status == _CANNOT_CONNECT:
                raise self.unreachable(exc) from exc
            raise
        return ImageInfo(id=data["Id"], config=data.get("Config") or {})

    async def pull(self, ref: str, log: LogFn, login: RegistryLogin | None = None) -> ImageInfo:
        tail = LogTail(log)
        tail.line(f"pulling {ref}")
        # X-Registry-Auth: dockerd logs in for this one pull; nothing is stored in its config.
        # aiodocker wants the registry host in the name it sends credentials with.
        auth = {"username": login.username, "password": login.password} if login is not None else None
        name = str(parse_reference(ref)) if login is not None else ref
        try:
            async for event in self.client.images.pull(name, auth=auth, stream=True):
                if "error" in event:
                    raise BuildFailed("base", f"cannot pull base image {ref}: {event['error']}", tail.text())
                status = event.get("status")
                if status and "progress" not in event:
                    tail.line(f"{event.get('id', '')} {status}".strip())
        except aiodocker.DockerError as exc:
            raise BuildFailed("base", f"cannot pull base image {ref}: {exc.message}", tail.text()) from exc
        return await self._pulled(ref, tail)

    async def build(self, context_dir: Path, tag: str, *, network: bool,
                    log: LogFn, step: str, display: dict[str, str] | None = None) -> str:
        tail = LogTail(log, display)
        params = {
            "t": tag,
            "dockerfile": "Dockerfile",
            "rm": "1",
            "forcerm": "1",
            "networkmode": "host" if network else "none",
        }
        image_id: str | None = None
        error: str | None = None
        containers: list[str] = []  # RUN containers, removed by us if the build is abandoned
        try:
            async with self._raw("build", "POST", params=params, data=context_tar(context_dir),
                                 headers={"content-type": "application/x-tar"}) as resp:
                async for raw in resp.content:
                    if not raw.strip():
                        continue
                    event = json.loads(raw)
                    if "stream" in event:
                        containers += _RUNNING_IN.findall(event["stream"])
                        tail.feed(_HOUSEKEEPING.sub("", event["stream"]))
                    if "error" in event:
                        error = event["error"]
                        if not _RUN_FAILED.match(error.strip()):  # that one only repeats the script
                            tail.feed(error + "\n")
                    aux = event.get("aux")
                    if isinstance(aux, dict) and "ID" in aux:
                        image_id = aux["ID"]
        except aiodocker.DockerError as exc:
            raise BuildFailed(step, exc.message, tail.text()) from exc
        except BaseException:
            # Cancelled or timed out: closing the request stops the build, but the classic
            # builder leaves the RUN container behind (running); remove it ourselves.
            await asyncio.shield(self._remove_containers(containers))
            raise
        if error is not None:
            # "The command '<the whole RUN line>' returned a non-zero code: 1" repeats the
            # Dockerfile; the tail already shows the step, so keep the message short.
            failed = _RUN_FAILED.match(error.strip())
            message = f"a RUN step returned a non-zero code: {failed.group(1)}" if failed else error.strip()
            raise BuildFailed(step, message, tail.text())
        info = await self.inspect(tag)
        if info is None or (image_id and info.id != image_id):
            raise BuildFailed(step, "the engine finished without producing the image", tail.text())
        tail.flush()
        return info.id

    async def run(self, image: str, command: list[str], *, network: bool, log: LogFn, step: str) -> None:
        tail = LogTail(log)
        config = {"Image": image, "Cmd": command, "Tty": False,
                  "HostConfig": {"NetworkMode": "host" if network else "none"}}
        try:
            container = await self.client.containers.create(config=config)
        except aiodocker.DockerError as exc:
            raise BuildFailed(step, f"cannot start a container of {image}: {exc.message}", tail.text()) from exc
        try:
            await container.start()
            async for chunk in container.log(stdout=True, stderr=True, follow=True):
                tail.feed(chunk)
            status = (await container.wait())["StatusCode"]
        finally:
            # Cancelled, failed or done: the container goes (it may still be running).
            await asyncio.shield(self._remove_containers([container.id]))
        if status != 0:
            raise BuildFailed(step, f"the step exited with status {status}", tail.text())
        tail.flush()

    async def _remove_containers(self, ids: list[str]) -> None:
        for container_id in ids:
            try:
                await self.client.containers.container(container_id).delete(force=True)
            except aiodocker.DockerError:
                pass  # already gone: the builder removed it itself

    async def export(self, ref: str, dest_dir: Path) -> ExportedImage:
        return (await self.export_many([ref], dest_dir))[ref]

    async def export_many(self, refs: list[str], dest_dir: Path) -> dict[str, ExportedImage]:
        """One ``docker save`` of all ``refs``: shared layers are written once."""
        path = dest_dir / "images.tar"
        with open(path, "wb") as out:
            # ``names`` repeats, which aiodocker's params mapping cannot express: query in the path.
            query = urllib.parse.urlencode([("names", ref) for ref in refs])
            async with self._raw(f"images/get?{query}", "GET") as resp:
                while chunk := await resp.content.read(1 << 20):
                    out.write(chunk)
        exported = ExportedImage("docker-archive", path)
        return {ref: exported for ref in refs}

    async def load(self, archive: Path, tag: str) -> None:
        try:
            with open(archive, "rb") as data:
                events = await self.client.images.import_image(data, timeout=_UNLIMITED)
        except aiodocker.DockerError as exc:
            raise BuildFailed("load", f"dockerd could not load {tag}: {exc.message}") from exc
        errors = [event["error"] for event in events or [] if isinstance(event, dict) and event.get("error")]
        if errors or await self.inspect(tag) is None:
            raise BuildFailed("load", f"dockerd could not load {tag}: {'; '.join(errors) or 'the image is not there'}")

    async def tag(self, ref: str, tag: str) -> None:
        repository, _, name = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "latest")
        try:
            await self.client.images.tag(ref, repository, tag=name)
        except aiodocker.DockerError as exc:
            raise BuildFailed("load", f"dockerd could not tag {ref} as {tag}: {exc.message}") from exc

    async def remove(self, ref: str) -> None:
        try:
            await self.client.images.delete(ref, noprune=False)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise

    async def run_mounted(self, image: str, argv: list[str], *, workdir: str, mounts: list[Mount],
                          env: dict[str, str], user: str | None, network: bool, labels: dict[str, str], log: LogFn,
                          timeout: float | None = None) -> RunResult:
        tail = LogTail(log)
        config = {
            "Image": image, "Cmd": argv, "WorkingDir": workdir, "Labels": labels, "User": user or "",
            "Env": [f"{key}={value}" for key, value in env.items()], "AttachStdout": False, "AttachStderr": False,
            "HostConfig": {"NetworkMode": "host" if network else "none",
                           "Binds": [f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in mounts]},
        }
        try:
            container = await self.client.containers.create(config)
        except aiodocker.DockerError as exc:
            raise EngineUnavailable(f"dockerd could not create a container of {image}: {exc.message}") from exc
        try:
            await container.start()
            async with asyncio.timeout(timeout):
                async for chunk in container.log(stdout=True, stderr=True, follow=True, timeout=_UNLIMITED):
                    tail.feed(chunk)
                status = await container.wait(timeout=_UNLIMITED)
            return RunResult(int(status.get("StatusCode", -1)), tail.text())
        finally:
            # Exit, timeout or cancellation: the container goes (killed first if it still runs).
            with contextlib.suppress(aiodocker.DockerError):
                await asyncio.shield(container.delete(force=True))

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None
